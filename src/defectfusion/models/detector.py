"""The detector: transformers' ``Deimv2ForObjectDetection`` with text-fusion class heads.

``build_detector`` is the one place where configuration becomes constructor arguments. The
model it returns *is* a ``Deimv2ForObjectDetection`` (same modules, same parameter names, same
outputs: ``logits`` [B, Q, C], ``pred_boxes`` [B, Q, 4] normalised cxcywh), with

- the original DEIMv2 semantics restored (:mod:`.semantics`) unless ``semantics: transformers``;
- a :class:`~.fusion.FusedClassifier` in place of the class projection of every decoder layer
  (so every auxiliary loss trains the fusion too), and optionally of the encoder's
  query-selection head.

Everything defectfusion needs to rebuild the model lives in ``config.defectfusion``, so a
saved folder (``config.json`` + ``model.safetensors``) is self-contained.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Deimv2Config, Deimv2ForObjectDetection
from transformers.models.deimv2.modeling_deimv2 import Deimv2FrozenBatchNorm2d

from ..config import FusionConfig, ModelConfig
from ..errors import ConfigError
from .fusion import FusedClassifier, TextFusionHead, random_text_embeddings, shuffled_text_embeddings
from .groups import parameter_group
from .inference import PredictsImages
from .presets import IMAGENET_MEAN, IMAGENET_STD, NO_MEAN, NO_STD, get_preset
from .semantics import apply_original_semantics
from .trunk import TakesTrunkFeatures

META_KEY = "defectfusion"


@dataclass
class FusionMeta:
    """How the fusion heads were built (stored in the saved config)."""

    text_dim: int
    text: str = "descriptions"  # "descriptions" | "shuffled" | "random"
    encoder: str | None = None  # the encoder's identity (cache key), e.g. "clip:hub:openai/clip-vit-base-patch32"
    descriptions: str | None = None
    temperature: float = 0.07
    query_selection: bool = False
    encoder_spec: str | None = None  # the spec it was loaded with (clip:NAME, ...): what-if descriptions reuse it
    text_seed: int | None = None  # the seed of a control's embeddings (shuffled, random); None for descriptions


@dataclass
class DetectorMeta:
    """defectfusion's part of the model config: what transformers' config does not say."""

    preset: str | None = None
    semantics: str = "original"
    image_size: tuple[int, int] = (640, 640)
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    fusion: FusionMeta | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # the dataset's COCO category id of each label (from training or conversion): results files carry them
    category_ids: list[int] | None = None
    resize: str = "plain"  # how images reach image_size: "plain" (stretch) or "letterbox" (aspect kept, padded)

    @classmethod
    def from_config(cls, config: Deimv2Config) -> DetectorMeta:
        raw = getattr(config, META_KEY, None)
        if raw is None:
            # A plain transformers checkpoint: keep transformers' semantics, infer the input.
            is_vit = getattr(config.backbone_config, "model_type", None) == "dinov3_vit"
            size = config.anchor_image_size or config.eval_size or (640, 640)
            size = (size, size) if isinstance(size, int) else tuple(size)
            return cls(
                semantics="transformers",
                image_size=size,
                image_mean=IMAGENET_MEAN if is_vit else NO_MEAN,
                image_std=IMAGENET_STD if is_vit else NO_STD,
            )
        raw = dict(raw)
        fusion = raw.pop("fusion", None)
        return cls(
            preset=raw.get("preset"),
            semantics=raw.get("semantics", "original"),
            image_size=tuple(raw.get("image_size", (640, 640))),
            image_mean=tuple(raw.get("image_mean", IMAGENET_MEAN)),
            image_std=tuple(raw.get("image_std", IMAGENET_STD)),
            fusion=FusionMeta(**fusion) if fusion else None,
            extra=raw.get("extra", {}),
            category_ids=[int(i) for i in raw["category_ids"]] if raw.get("category_ids") else None,
            resize=raw.get("resize", "plain"),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        data["image_mean"] = list(self.image_mean)
        data["image_std"] = list(self.image_std)
        return data


class DefectDetector(PredictsImages, TakesTrunkFeatures, Deimv2ForObjectDetection):
    """``Deimv2ForObjectDetection`` + original semantics + text-fusion heads (+ ``predict``).

    Built from a ``Deimv2Config`` whose ``defectfusion`` entry holds a :class:`DetectorMeta`.
    Fusion heads are created with zero text embeddings; ``build_detector`` or loading weights fills
    them in.
    """

    def __init__(self, config: Deimv2Config):
        super().__init__(config)
        # transformers picks the loss by class name; ours is a Deimv2ForObjectDetection. The
        # trainer installs the corrected DEIM criterion (engine.training.loss) on top.
        self.loss_type = "Deimv2ForObjectDetection"
        self.meta = DetectorMeta.from_config(config)
        self.frozen_groups: frozenset[str] = frozenset()
        if self.meta.semantics == "original":
            apply_original_semantics(self)
        if self.meta.fusion is not None:
            self._insert_fusion_heads(self.meta.fusion)
        # Parameters the model creates frozen are constants of the architecture (the decoder's
        # `up` and `reg_scale`: the loss builds its targets from the config's fixed values).
        self.constant_parameters: frozenset[str] = frozenset(
            name for name, param in self.named_parameters() if not param.requires_grad
        )

    def _insert_fusion_heads(self, fusion: FusionMeta) -> None:
        placeholder = torch.zeros(self.config.num_labels, fusion.text_dim)

        def fused(linear: nn.Linear) -> FusedClassifier:
            head = TextFusionHead(
                linear.in_features,
                placeholder,
                temperature=fusion.temperature,
                prior_prob=self.config.initializer_bias_prior_prob or 0.01,
            )
            return FusedClassifier(linear, head)

        decoder_heads = self.model.decoder.class_embed
        for i, linear in enumerate(decoder_heads):
            decoder_heads[i] = fused(linear)
            # transformers keeps a tied top-level copy; keep it the very same module.
            self.class_embed[i] = decoder_heads[i]
        if fusion.query_selection:
            self.model.enc_score_head = fused(self.model.enc_score_head)

    # ---------------------------------------------------------------- fusion access

    def set_gates(self, value: float) -> None:
        """Every fusion head's gate to ``value`` (0, the default start: the plain detector's outputs)."""
        with torch.no_grad():
            for head in self.fusion_heads():
                head.gate.fill_(value)

    def fusion_heads(self) -> Iterator[TextFusionHead]:
        """Every distinct fusion head (decoder layers first, then query selection)."""
        seen: set[int] = set()
        for module in self.modules():
            if isinstance(module, TextFusionHead) and id(module) not in seen:
                seen.add(id(module))
                yield module

    @property
    def is_fused(self) -> bool:
        return self.meta.fusion is not None

    @property
    def text_embeddings(self) -> torch.Tensor | None:
        """``[C, D]`` class text embeddings carried by the model (None when not fused)."""
        head = next(self.fusion_heads(), None)
        return None if head is None else head.text_embeddings

    def set_text_embeddings(
        self,
        embeddings: torch.Tensor,
        *,
        text: str | None = None,
        encoder: str | None = None,
        descriptions: str | None = None,
        encoder_spec: str | None = None,
    ) -> None:
        """Replace the class text embeddings of every fusion head (e.g. what-if descriptions)."""
        if not self.is_fused:
            raise ConfigError("this detector has no fusion head: build it with fusion enabled to use text")
        with torch.no_grad():
            for head in self.fusion_heads():
                head.set_text_embeddings(embeddings.to(head.text_embeddings.device))
        given = {"text": text, "encoder": encoder, "descriptions": descriptions, "encoder_spec": encoder_spec}
        updates = {k: v for k, v in given.items() if v}
        for key, value in updates.items():
            setattr(self.meta.fusion, key, value)
        self.config.defectfusion = self.meta.to_dict()

    # ---------------------------------------------------------------- freezing

    def train(self, mode: bool = True) -> DefectDetector:
        super().train(mode)
        if mode and self.frozen_groups:
            # Frozen parts keep their batch-norm statistics: their BN layers stay in eval mode.
            for name, module in self.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm | Deimv2FrozenBatchNorm2d):
                    if parameter_group(f"{name}.weight") in self.frozen_groups:
                        module.eval()
        return self

    # ---------------------------------------------------------------- io

    def set_category_ids(self, category_ids: Sequence[int]) -> None:
        """Remember the dataset's COCO category id of each label (saved with the model)."""
        ids = [int(i) for i in category_ids]
        if len(ids) != self.config.num_labels or len(set(ids)) != len(ids):
            raise ConfigError(f"need {self.config.num_labels} distinct category ids (one per class), got {ids}")
        self.meta.category_ids = ids
        self.config.defectfusion = self.meta.to_dict()

    def set_image_size(self, size: Sequence[int] | None, resize: str | None = None) -> None:
        """Change the input size (and the resize: plain | letterbox) the model is trained, evaluated and
        exported with; the weights do not care. ``None`` keeps what the model has."""
        if size is not None:
            size = (int(size[0]), int(size[1]))
            check_image_size(self.config, size)
            self.meta.image_size = size
        if resize is not None:
            if resize not in ("plain", "letterbox"):
                raise ConfigError(f"resize must be plain or letterbox, got {resize!r}")
            self.meta.resize = resize
        self.config.defectfusion = self.meta.to_dict()

    @property
    def class_names(self) -> list[str]:
        return [self.config.id2label[i] for i in range(self.config.num_labels)]


# ----------------------------------------------------------------------------- construction


def model_stride(config: Deimv2Config | dict[str, Any]) -> int:
    """The stride of the coarsest feature level: inputs must be a multiple of it."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    strides = list(get("feat_strides", [8, 16, 32]))
    # Levels beyond the encoder's are made by stride-2 convolutions on its last map.
    return max(strides) * 2 ** max(0, get("num_feature_levels", len(strides)) - len(strides))


def check_image_size(config: Deimv2Config | dict[str, Any], size: Sequence[int], what: str = "image size") -> None:
    stride = model_stride(config)
    if len(size) != 2 or any(int(s) <= 0 or int(s) % stride for s in size):
        suggestion = [max(1, round(int(s) / stride)) * stride for s in size]
        raise ConfigError(
            f"{what} {list(size)} must be two positive multiples of the model's largest stride ({stride}); "
            f"e.g. {suggestion}"
        )


def detector_config(model: ModelConfig, class_names: Sequence[str], fusion: FusionMeta | None = None) -> Deimv2Config:
    """The ``Deimv2Config`` for a preset, classes and fusion settings."""
    if not class_names:
        raise ConfigError("the detector needs at least one class name")
    if len(set(class_names)) != len(class_names):
        raise ConfigError(f"class names must be unique, got {list(class_names)}")
    preset = get_preset(model.preset)
    from transformers import AutoConfig

    backbone = dict(preset.backbone_config)
    backbone_config = AutoConfig.for_model(backbone.pop("model_type"), **backbone)
    kwargs = {**preset.detector_config, **model.overrides}
    image_size = tuple(model.image_size or preset.image_size)
    check_image_size(kwargs, image_size, f"model.image_size for preset {preset.name!r}")
    meta = DetectorMeta(
        preset=preset.name,
        semantics=model.semantics,
        image_size=image_size,
        image_mean=preset.image_mean,
        image_std=preset.image_std,
        fusion=fusion,
        resize=model.resize or "plain",
    )
    try:
        config = Deimv2Config(
            backbone_config=backbone_config,
            num_labels=len(class_names),
            id2label=dict(enumerate(class_names)),
            label2id={name: i for i, name in enumerate(class_names)},
            **kwargs,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.overrides: invalid Deimv2Config arguments: {exc}") from None
    setattr(config, META_KEY, meta.to_dict())
    return config


def fusion_text(fusion: FusionConfig, text_embeddings: torch.Tensor) -> torch.Tensor:
    """The ``[C, D]`` class embeddings a fused model carries for ``fusion.text``.

    ``descriptions``: ``text_embeddings`` as given; ``shuffled``: the same rows assigned to the wrong
    classes by a derangement fixed by ``fusion.random_seed`` (text geometry without its meaning);
    ``random``: fixed random unit vectors of the same shape (no text at all).
    """
    classes, dim = text_embeddings.shape
    if fusion.text == "random":
        return random_text_embeddings(classes, dim, fusion.random_seed)
    if fusion.text == "shuffled":
        if classes < 2:
            raise ConfigError(
                f"fusion.text: shuffled gives each class another class's text, which needs at least 2 classes; "
                f"the dataset has {classes}: use fusion.text: random for a control"
            )
        return shuffled_text_embeddings(text_embeddings, fusion.random_seed)
    return text_embeddings


def fusion_meta(
    fusion: FusionConfig, text_embeddings: torch.Tensor, *, encoder: str | None = None, descriptions: str | None = None
) -> FusionMeta:
    return FusionMeta(
        text_dim=int(text_embeddings.shape[1]),
        text=fusion.text,
        encoder=encoder,
        descriptions=descriptions,
        temperature=fusion.temperature,
        query_selection=fusion.query_selection,
        encoder_spec=fusion.encoder,
        text_seed=None if fusion.text == "descriptions" else fusion.random_seed,
    )


def build_detector(
    model: ModelConfig,
    class_names: Sequence[str],
    fusion: FusionConfig | None = None,
    text_embeddings: torch.Tensor | None = None,
    *,
    encoder: str | None = None,
    descriptions: str | None = None,
) -> DefectDetector:
    """Build a randomly initialised detector, fused when ``fusion.enabled`` and embeddings are given.

    Args:
        model: architecture settings.
        class_names: ``C`` class names, in label order.
        fusion: fusion settings; ``None`` or ``enabled: false`` builds the plain detector.
        text_embeddings: ``[C, D]`` class text embeddings (``fusion.text == "shuffled"`` assigns them
            to the wrong classes; with ``"random"`` only their shape is used: see :func:`fusion_text`).
    """
    meta = None
    if fusion is not None and fusion.enabled:
        if text_embeddings is None:
            raise ConfigError("fusion is enabled but no text embeddings were given")
        if text_embeddings.shape[0] != len(class_names):
            raise ConfigError(
                f"text embeddings describe {text_embeddings.shape[0]} classes, the dataset has {len(class_names)}"
            )
        text_embeddings = fusion_text(fusion, text_embeddings)
        meta = fusion_meta(fusion, text_embeddings, encoder=encoder, descriptions=descriptions)
    detector = DefectDetector(detector_config(model, class_names, meta))
    if meta is not None:
        detector.set_text_embeddings(text_embeddings)
        detector.set_gates(fusion.gate_init)
    return detector


def add_fusion(
    detector: DefectDetector,
    fusion: FusionConfig,
    text_embeddings: torch.Tensor,
    *,
    encoder: str | None = None,
    descriptions: str | None = None,
) -> DefectDetector:
    """A fused copy of a plain detector: same weights, fusion heads gated at zero.

    The result computes exactly what ``detector`` computes until the gates move.
    """
    if detector.is_fused:
        raise ConfigError("the detector already has fusion heads")
    if text_embeddings.shape[0] != detector.config.num_labels:
        classes = detector.config.num_labels
        raise ConfigError(f"text embeddings describe {text_embeddings.shape[0]} classes, the detector has {classes}")
    text_embeddings = fusion_text(fusion, text_embeddings)
    meta = fusion_meta(fusion, text_embeddings, encoder=encoder, descriptions=descriptions)
    config = Deimv2Config.from_dict(detector.config.to_dict())
    detector_meta = DetectorMeta.from_config(detector.config)
    detector_meta.fusion = meta
    setattr(config, META_KEY, detector_meta.to_dict())
    fused = DefectDetector(config)
    missing, unexpected = fused.load_state_dict(detector.state_dict(), strict=False)
    if unexpected or any(".fusion." not in k for k in missing):
        raise RuntimeError(
            f"fusion insertion changed the base model: missing={missing[:5]} unexpected={unexpected[:5]}"
        )
    fused.set_text_embeddings(text_embeddings)
    fused.set_gates(fusion.gate_init)
    return fused.to(next(detector.parameters()).device)
