"""Did the model use the text? The manipulation check of a fused detector.

A study that compares text against its controls compares language only if the text path carried
part of the logits; with its gates near 0 it compares training schedules. This measures, at the
evaluation decoder layer (the one whose logits become the detections), how the fused class logit
splits into the detector's own term and the gated text term::

    logit = base + g * text          base = W h + b,   text = exp(s) * cos(P h, T) + beta

on the queries the detections are made of: those whose top class score (after LQE, as the
evaluator sees it) is at least :data:`SCORE_THRESHOLD` (the evaluator's confusion threshold); an
image without any keeps its :data:`FALLBACK_K` best queries instead. For each such query and its
predicted class (the fused top class) it sums ``|base|`` and ``|g * text|``, the same with each
term's mean over classes taken off (the gated bias ``g * beta`` is the same for every class: it
moves no ranking, so the centred terms are what can change a prediction), and whether the base
logits alone would have predicted another class (the text term *flipped* it).

The terms are read by forward hooks on the evaluation layer's
:class:`~defectfusion.models.fusion.FusedClassifier` and on the model (its final logits): what the
model outputs does not change. :class:`TextUsageProbe` records them around any code that runs the
model in eval mode (a :class:`~.predictor.Predictor` scoring the test split);
:func:`measure_text_usage` runs the model over batches itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..evaluation.validation import batch_inputs
from .attribution import evaluation_layer

#: The evaluator's confusion threshold: a query at or above it is a detection the confusion matrix counts.
SCORE_THRESHOLD = 0.25
#: Queries an image contributes when none reaches the threshold (its best ones).
FALLBACK_K = 10


@dataclass(frozen=True)
class TextUsage:
    """How much of the detections' class logits the text term carried.

    Attributes:
        gates: the gate ``g`` of every fusion head (decoder layers in order, then query selection).
        layer: the evaluation decoder layer; ``layer_gate`` its head's gate.
        score_threshold, fallback_k: how queries were selected (see the module's docstring).
        num_images, num_queries: images and queries seen.
        num_confident: queries at or above the threshold; ``num_selected`` the queries measured
            (the confident ones, plus ``fallback_k`` of each of the ``fallback_images`` without any).
        mean_abs_base: mean ``|W h + b|`` of the predicted class's logit over the selected queries.
        mean_abs_text: mean ``|g * text|`` of the same logit.
        text_share: ``mean_abs_text / mean_abs_base``: 0 when the text path is closed.
        mean_abs_base_centered, mean_abs_text_centered: the same with each term's mean over the
            classes of the query taken off (what separates classes; the gated bias cancels).
        text_share_centered: ``mean_abs_text_centered / mean_abs_base_centered``.
        flip_share: share of the selected queries whose top class from the base logits alone
            differs from the fused one (``num_flipped`` of them).
    """

    gates: list[float]
    layer: int
    layer_gate: float
    score_threshold: float
    fallback_k: int
    num_images: int
    num_queries: int
    num_confident: int
    num_selected: int
    fallback_images: int
    num_flipped: int
    mean_abs_base: float | None
    mean_abs_text: float | None
    text_share: float | None
    mean_abs_base_centered: float | None
    mean_abs_text_centered: float | None
    text_share_centered: float | None
    flip_share: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for a log: gate, text share and flips."""
        if self.text_share is None:
            return f"text usage: gate {self.layer_gate:.4f}, no query measured"
        return (
            f"text usage: gate {self.layer_gate:.4f}, |g*text| / |base| = {self.text_share:.3f} "
            f"(class-centred {self.text_share_centered:.3f}), text flipped {self.flip_share:.1%} of "
            f"{self.num_selected} queries"
        )


def select_queries(scores: torch.Tensor, threshold: float, fallback_k: int) -> tuple[torch.Tensor, bool]:
    """Indices of the queries of one image to measure: those with ``scores [Q] >= threshold``, else
    the ``fallback_k`` best; and whether the fallback was taken."""
    confident = torch.nonzero(scores >= threshold).flatten()
    if len(confident):
        return confident, False
    return scores.topk(min(fallback_k, scores.numel())).indices, True


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


class UsageSums:
    """Sums over selected queries, batch after batch; :meth:`result` turns them into a :class:`TextUsage`."""

    def __init__(self, score_threshold: float = SCORE_THRESHOLD, fallback_k: int = FALLBACK_K):
        self.score_threshold, self.fallback_k = float(score_threshold), int(fallback_k)
        self.images = self.queries = self.confident = self.selected = self.fallbacks = self.flipped = 0
        self.base = self.text = self.base_centered = self.text_centered = 0.0

    def add(self, base: torch.Tensor, text: torch.Tensor, logits: torch.Tensor) -> None:
        """One batch: ``base`` and gated ``text`` terms of the evaluation layer and the model's final
        ``logits``, all ``[B, Q, C]``."""
        base, text, logits = base.float(), text.float(), logits.float()
        scores = logits.sigmoid().amax(-1)  # [B, Q]: each query's top class score
        for b in range(base.shape[0]):
            index, fallback = select_queries(scores[b], self.score_threshold, self.fallback_k)
            self.images += 1
            self.queries += scores.shape[1]
            self.confident += int((scores[b] >= self.score_threshold).sum())
            self.fallbacks += int(fallback)
            self._add_queries(base[b, index], text[b, index])

    def _add_queries(self, base: torch.Tensor, text: torch.Tensor) -> None:
        """``base``, ``text`` ``[N, C]`` of the selected queries."""
        predicted = (base + text).argmax(-1, keepdim=True)
        base_c, text_c = base.gather(-1, predicted), text.gather(-1, predicted)
        self.selected += base.shape[0]
        self.flipped += int((base.argmax(-1, keepdim=True) != predicted).sum())
        self.base += float(base_c.abs().sum())
        self.text += float(text_c.abs().sum())
        self.base_centered += float((base_c - base.mean(-1, keepdim=True)).abs().sum())
        self.text_centered += float((text_c - text.mean(-1, keepdim=True)).abs().sum())

    def result(self, gates: list[float], layer: int, layer_gate: float) -> TextUsage:
        n = self.selected

        def mean(total: float) -> float | None:
            return total / n if n else None

        return TextUsage(
            gates=gates,
            layer=layer,
            layer_gate=layer_gate,
            score_threshold=self.score_threshold,
            fallback_k=self.fallback_k,
            num_images=self.images,
            num_queries=self.queries,
            num_confident=self.confident,
            num_selected=n,
            fallback_images=self.fallbacks,
            num_flipped=self.flipped,
            mean_abs_base=mean(self.base),
            mean_abs_text=mean(self.text),
            text_share=_ratio(self.text, self.base) if n else None,
            mean_abs_base_centered=mean(self.base_centered),
            mean_abs_text_centered=mean(self.text_centered),
            text_share_centered=_ratio(self.text_centered, self.base_centered) if n else None,
            flip_share=self.flipped / n if n else None,
        )


class TextUsageProbe:
    """Records the text usage of ``model`` while other code runs it (in eval mode), by forward hooks.

    ``with TextUsageProbe(model) as probe: ...run the model...``, then :meth:`result`. On a model
    without fusion heads it records nothing and :meth:`result` is None.
    """

    def __init__(self, model: torch.nn.Module, score_threshold: float = SCORE_THRESHOLD, fallback_k: int = FALLBACK_K):
        self.model = model
        self.heads = list(model.fusion_heads()) if getattr(model, "is_fused", False) else []
        self.sums = UsageSums(score_threshold, fallback_k)
        self.layer = evaluation_layer(model) if self.heads else -1
        self._terms: tuple[torch.Tensor, torch.Tensor] | None = None
        self._stack = ExitStack()

    @property
    def fused(self) -> bool:
        return bool(self.heads)

    def __enter__(self) -> TextUsageProbe:
        if self.fused:
            head = self.model.model.decoder.class_embed[self.layer]
            if not hasattr(head, "terms"):
                raise RuntimeError(f"decoder layer {self.layer}'s class head has no fusion: cannot split its logits")
            self._stack.callback(head.register_forward_hook(self._on_head).remove)
            self._stack.callback(self.model.register_forward_hook(self._on_model).remove)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
        self._terms = None

    def _on_head(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
        with torch.no_grad():
            base, text = module.terms(inputs[0])
        self._terms = (base.detach(), text.detach())

    def _on_model(self, module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if module.training:
            raise RuntimeError("text usage is measured in eval mode (training runs every layer's class head)")
        if self._terms is None:
            raise RuntimeError(f"the class head of decoder layer {self.layer} was not called in this forward pass")
        logits = output.logits if hasattr(output, "logits") else output[0]
        self.sums.add(*self._terms, logits.detach())
        self._terms = None

    def result(self) -> TextUsage | None:
        """What was recorded (None for a model without fusion heads)."""
        if not self.fused:
            return None
        gates = [float(h.gate.detach()) for h in self.heads]
        layer_gate = float(self.model.model.decoder.class_embed[self.layer].fusion.gate.detach())
        return self.sums.result(gates, self.layer, layer_gate)


@torch.inference_mode()
def measure_text_usage(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor | Mapping[str, Any]],
    *,
    device: str | torch.device | None = None,
    score_threshold: float = SCORE_THRESHOLD,
    fallback_k: int = FALLBACK_K,
) -> TextUsage | None:
    """The text usage of ``model`` over ``batches`` (None when it has no fusion head).

    Args:
        model: a detector (:class:`~defectfusion.models.detector.DefectDetector`); it runs in eval mode.
        batches: normalised ``pixel_values [B, 3, H, W]``, or collated batches (``pixel_values`` or
            a cached trunk's ``trunk_features``, as validation's loaders give).
        device: where the model runs (default: where its parameters are).
    """
    probe = TextUsageProbe(model, score_threshold, fallback_k)
    if not probe.fused:
        return None
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with probe:
            for batch in batches:
                inputs = (
                    batch_inputs(batch, device) if isinstance(batch, Mapping) else {"pixel_values": batch.to(device)}
                )
                model(**inputs)
    finally:
        model.train(was_training)
    return probe.result()
