"""The text-fusion class head: text-aware logits added to the detector's own, gated from zero.

For query features ``h`` [B, N, H] and class text embeddings ``T`` [C, D]::

    base   = W h + b                               # the detector's trained class logits
    text   = exp(s) * <norm(P h), norm(T)> + beta  # contrastive logits, P: H -> D
    logits = base + g * text                       # g starts at 0

With ``g = 0`` the fused head returns ``base`` bit for bit, so a fused model starts exactly at
its baseline. Only ``g`` gets a gradient on the first step; from the second on, all fusion
parameters do (the zero-init trick of LayerScale / ControlNet).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# CLIP's initial temperature 0.07 and its cap of 100 on the logit scale.
DEFAULT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = math.log(100.0)


def prior_logit(prior_prob: float = 0.01) -> float:
    """Logit of a prior probability: the bias DEIMv2 gives its class heads (-4.6 for 0.01)."""
    return -math.log((1.0 - prior_prob) / prior_prob)


def class_text_embeddings(prompt_embeddings: list[torch.Tensor]) -> torch.Tensor:
    """Average several prompt embeddings per class into one unit vector per class.

    Args:
        prompt_embeddings: one ``[P_c, D]`` tensor per class (``P_c >= 1`` prompts).

    Returns:
        ``[C, D]`` float32: for each class the L2-normalised mean of its L2-normalised prompts.
    """
    rows = [F.normalize(e.float(), dim=-1).mean(dim=0) for e in prompt_embeddings]
    return F.normalize(torch.stack(rows), dim=-1)


def random_text_embeddings(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Fixed random unit vectors ``[C, D]``: the control that carries no text information."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_classes, dim, generator=generator), dim=-1)


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A permutation of ``0 .. n-1`` with no fixed point, drawn uniformly for ``seed`` (``n >= 2``).

    Random permutations are drawn until one moves every index (on average e ~ 2.7 draws).
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {n}")
    generator = torch.Generator().manual_seed(seed)
    identity = torch.arange(n)
    while True:
        order = torch.randperm(n, generator=generator)
        if not (order == identity).any():
            return order


def shuffled_text_embeddings(text_embeddings: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The control that keeps text geometry without its meaning: class ``i`` gets the embedding of
    class ``derangement(C, seed)[i]``, never its own.

    Args:
        text_embeddings: ``[C, D]`` real class embeddings, ``C >= 2``.

    Returns:
        ``[C, D]``: the same rows, each assigned to another class.
    """
    return text_embeddings[derangement(text_embeddings.shape[0], seed)].clone()


class TextFusionHead(nn.Module):
    """Text-aware residual on top of a detector's class logits.

    Args:
        hidden_dim: width ``H`` of the query features.
        text_embeddings: ``[C, D]`` class text embeddings (normalised here again).
        temperature: initial softmax temperature; the logit scale starts at ``log(1 / temperature)``.
        prior_prob: the text logits' bias starts at this prior's logit, as the detector's own.

    The gate starts at 0, so a new head keeps the detector's outputs exactly
    (:meth:`DefectDetector.set_gates` starts it elsewhere).

    Shapes:
        ``forward(h [.., H], base_logits [.., C]) -> [.., C]``.
    """

    def __init__(
        self,
        hidden_dim: int,
        text_embeddings: torch.Tensor,
        temperature: float = DEFAULT_TEMPERATURE,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if text_embeddings.dim() != 2:
            raise ValueError(f"text_embeddings must be [C, D], got shape {tuple(text_embeddings.shape)}")
        text_dim = text_embeddings.shape[1]
        self.proj = nn.Linear(hidden_dim, text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.logit_bias = nn.Parameter(torch.tensor(prior_logit(prior_prob)))
        self.gate = nn.Parameter(torch.tensor(0.0))
        # A buffer, not a parameter: checkpoints and exports carry the embeddings, never the encoder.
        self.register_buffer("text_embeddings", F.normalize(text_embeddings.float(), dim=-1))
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @property
    def num_classes(self) -> int:
        return self.text_embeddings.shape[0]

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``[.., C]`` between projected features ``[.., H]`` and each class text.

        Under mixed precision the projection, the normalisation and the cosine run in float32:
        in bf16 a unit vector's norm is off by up to 0.4%, which the logit scale (up to 100) would
        turn into logit errors of 0.4.
        """
        if torch.is_autocast_enabled(features.device.type):
            with torch.autocast(features.device.type, enabled=False):
                return self.similarity(features.float())
        projected = F.normalize(self.proj(features), dim=-1)
        return projected @ self.text_embeddings.to(projected.dtype).t()

    def text_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Ungated contrastive logits ``[.., C]``."""
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        return scale * self.similarity(features) + self.logit_bias

    def forward(self, features: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
        # the base logits' dtype: with the gate at 0 the sum is the base bit for bit in every precision
        return (base_logits + self.gate * self.text_logits(features)).to(base_logits.dtype)

    def set_text_embeddings(self, text_embeddings: torch.Tensor) -> None:
        """Swap the class embeddings (same shape) without touching the learned parameters."""
        if text_embeddings.shape != self.text_embeddings.shape:
            raise ValueError(
                f"new text embeddings have shape {tuple(text_embeddings.shape)}, the head was trained with "
                f"{tuple(self.text_embeddings.shape)}: use the same classes and a text encoder of the same width"
            )
        self.text_embeddings.copy_(F.normalize(text_embeddings.float(), dim=-1))

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, text_dim={self.text_embeddings.shape[1]}"


class FusedClassifier(nn.Linear):
    """A detector's class projection (``nn.Linear``) with a :class:`TextFusionHead` beside it.

    It keeps the ``weight``/``bias`` names of the linear layer it replaces, so a plain detector's
    weights load into a fused one unchanged; only ``fusion.*`` keys are new.
    """

    def __init__(self, linear: nn.Linear, fusion: TextFusionHead):
        super().__init__(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        # Share the trained tensors, so tied copies elsewhere stay tied.
        self.weight = linear.weight
        self.bias = linear.bias
        if fusion.num_classes != linear.out_features:
            raise ValueError(
                f"text embeddings describe {fusion.num_classes} classes but the detector has {linear.out_features}"
            )
        self.fusion = fusion

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fusion(features, super().forward(features))

    def terms(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two terms of :meth:`forward`'s logits, each ``[.., C]``: the detector's own ``W h + b``
        and the gated text term ``g * text`` (their sum is the fused logits)."""
        return super().forward(features), self.fusion.gate * self.fusion.text_logits(features)
