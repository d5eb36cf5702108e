"""The trunk: backbone + encoder, the part of the detector a phase may compute once per image.

``trunk_features(detector, pixels)`` returns the encoder's multi-scale feature maps;
``detector(trunk_features=maps, labels=...)`` (the :class:`TakesTrunkFeatures` mixin) runs what comes
after them (decoder input projections, query selection, denoising queries, decoder, heads and loss)
through transformers' own forward, so a step from cached maps computes what a step from pixels does.

A cached map is only the same tensor the trunk would compute when the trunk is frozen and computes
the same in training as in evaluation: :func:`trunk_variability` names what would break that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.models.deimv2.modeling_deimv2 import Deimv2EncoderOutput

TRUNK_GROUPS: tuple[str, ...] = ("backbone", "encoder")  # the parameter groups the trunk's modules belong to

# config entries that do not change what the trunk computes (names, versions, the class list)
_NOT_TRUNK_KEYS = frozenset(
    {"_name_or_path", "transformers_version", "architectures", "id2label", "label2id", "dtype", "torch_dtype"}
)


def trunk_modules(detector: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(conv_encoder, encoder)``: backbone (+ spatial tuning adapter and projections), then hybrid/lite encoder."""
    return detector.model.conv_encoder, detector.model.encoder


def trunk_features(detector: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's output for ``pixel_values`` ``[B, 3, H, W]``: one ``[B, C, H / s, W / s]`` map per level."""
    conv_encoder, encoder = trunk_modules(detector)
    return list(encoder(conv_encoder(pixel_values)).feature_maps)


def trunk_is_frozen(detector: nn.Module) -> bool:
    return not any(p.requires_grad for module in trunk_modules(detector) for p in module.parameters())


def trunk_variability(detector: nn.Module) -> list[str]:
    """What makes the trunk compute differently from step to step or from evaluation (empty: nothing)."""
    reasons = []
    if getattr(detector.config, "eval_size", None) is not None:
        reasons.append("config.eval_size is set: the encoder computes differently in training and evaluation")
    for prefix, module in zip(("conv_encoder", "encoder"), trunk_modules(detector), strict=True):
        for name, sub in module.named_modules():
            # dropout, attention dropout, drop-path: attributes named *drop* holding a probability
            rates = {k: v for k, v in vars(sub).items() if "drop" in k and isinstance(v, float) and v > 0}
            if isinstance(sub, nn.Dropout) and sub.p > 0:
                rates["p"] = sub.p
            for key, rate in rates.items():
                reasons.append(f"{prefix}.{name or '.'} has {key}={rate}: the frozen trunk is random in training")
                break
            if len(reasons) >= 3:
                return reasons
    return reasons


def trunk_fingerprint(detector: nn.Module) -> str:
    """A hash of everything the trunk's output depends on apart from its input: its architecture
    (the model config, without names and labels), the original-semantics switch and every tensor
    of its state (weights and batch-norm statistics)."""
    digest = hashlib.sha256()
    config = {k: v for k, v in detector.config.to_dict().items() if k not in _NOT_TRUNK_KEYS}
    meta = config.pop("defectfusion", None) or {}
    config["semantics"] = meta.get("semantics", "transformers")
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for prefix, module in zip(("conv_encoder", "encoder"), trunk_modules(detector), strict=True):
        for name, tensor in module.state_dict().items():
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{prefix}.{name}:{data.dtype}:{tuple(data.shape)}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def _serving(detector: nn.Module, feature_maps: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within: the trunk returns ``feature_maps`` instead of computing (its modules and weights untouched)."""
    conv_encoder, encoder = trunk_modules(detector)
    conv_encoder.forward = lambda *args, **kwargs: None  # its output would only feed the encoder
    encoder.forward = lambda *args, **kwargs: Deimv2EncoderOutput(feature_maps=list(feature_maps))
    try:
        yield
    finally:
        del conv_encoder.forward, encoder.forward


class TakesTrunkFeatures:
    """Lets the detector start from the trunk's output: ``model(trunk_features=maps, labels=...)``.

    ``maps`` are what :func:`trunk_features` returns. Everything after the trunk runs as in a forward
    from ``pixel_values``: transformers only reads their batch size and device.
    """

    def forward(self, pixel_values: torch.Tensor | None = None, *args: Any, trunk_features=None, **kwargs: Any):
        if trunk_features is None:
            return super().forward(pixel_values, *args, **kwargs)
        if pixel_values is not None:
            raise ValueError("give pixel_values or trunk_features, not both")
        maps = list(trunk_features)
        stand_in = maps[0].new_zeros(()).expand(maps[0].shape[0], 3, 1, 1)
        with _serving(self, maps):
            return super().forward(stand_in, *args, **kwargs)
