"""What the converter knows while it decides an architecture: shape queries on the weights, the result.

:class:`Weights` answers shape questions about an original state dict (``MISSING`` for every
question when there is none: a YAML alone). :class:`Architecture` collects the decided values and
builds the ``transformers`` config from them, each value coerced to the type its field declares.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, Deimv2Config
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ...errors import ConfigError
from ..field_types import coerce_kwargs
from ..presets import IMAGENET_MEAN, IMAGENET_STD
from .config import MISSING, Settings


class Weights:
    """Shape queries on an original state dict; every query is ``MISSING`` without one."""

    def __init__(self, state: dict[str, torch.Tensor] | None):
        self.state = state or {}
        self.present = bool(state)

    def has(self, key: str) -> bool:
        return key in self.state

    def any(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.state)

    def dim(self, key: str, axis: int) -> Any:
        tensor = self.state.get(key)
        return MISSING if tensor is None or tensor.dim() <= axis else int(tensor.shape[axis])

    def count(self, pattern: str) -> Any:
        """Number of distinct integers matched by the group of ``pattern`` at the start of keys."""
        if not self.present:
            return MISSING
        regex = re.compile(pattern)
        return len({m.group(1) for k in self.state if (m := regex.match(k))})

    def scalar(self, key: str) -> Any:
        tensor = self.state.get(key)
        return MISSING if tensor is None or tensor.numel() != 1 else tensor.item()

    def flag(self, value: bool) -> Any:
        """A yes/no the weights tell by a tensor's presence (``MISSING`` without weights)."""
        return value if self.present else MISSING


@dataclass
class Architecture:
    """Everything a ``Deimv2Config`` needs, decided from the YAML and the weights."""

    backbone: dict[str, Any]  # backbone config kwargs, with "model_type"
    detector: dict[str, Any]  # Deimv2Config kwargs
    kind: str  # "dinov3" | "hgnetv2"
    num_classes: int = 80
    image_size: tuple[int, int] = (640, 640)
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    verified: list[str] = field(default_factory=list)  # buffers recomputed and checked against the weights
    scratch: dict[str, Any] = field(default_factory=dict)  # values passed between resolution steps

    def deimv2_config(self, settings: Settings, class_names: Sequence[str]) -> Deimv2Config:
        """The transformers config, every value coerced to its declared type (errors name the YAML key)."""
        backbone = dict(self.backbone)
        model_type = backbone.pop("model_type")
        backbone = coerce_kwargs(
            CONFIG_MAPPING[model_type], backbone, lambda name, exc: settings.field_error(f"{model_type}.{name}", exc)
        )
        detector = coerce_kwargs(Deimv2Config, self.detector, settings.field_error)
        try:
            backbone_config = AutoConfig.for_model(model_type, **backbone)
            return Deimv2Config(
                backbone_config=backbone_config,
                initializer_bias_prior_prob=0.01,
                freeze_backbone_batch_norms=False,
                eval_size=None,
                anchor_image_size=None,
                num_labels=len(class_names),
                id2label=dict(enumerate(class_names)),
                label2id={n: i for i, n in enumerate(class_names)},
                **detector,
            )
        except (TypeError, ValueError) as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(
                f"{settings.config.path}: the architecture it describes is not a valid DEIMv2 model: {detail}"
            ) from None
