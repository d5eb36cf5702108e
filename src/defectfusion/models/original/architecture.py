"""The architecture an original DEIMv2 YAML (and, when given, its checkpoint's tensors) describes.

:func:`resolve_architecture` decides every value ``transformers``' ``Deimv2Config`` and its
backbone config need: from the YAML (coerced to the type each field declares and checked against
the tensor shapes), from the shapes where the YAML is silent, else the original code's default,
else an error naming the key. Without a checkpoint the YAML alone decides, with the original
code's own tables for what it derives from a name (``vit_tinyplus``, ``dinov3_vits16``, ``B4``):
that builds any released config's architecture, e.g. to train it from scratch or to check a
config before converting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...errors import CheckpointError, ConfigError
from ..presets import IMAGENET_MEAN, IMAGENET_STD, NO_MEAN, NO_STD
from .backbone import dinov3_backbone, hgnet_backbone
from .config import OriginalConfig, Settings
from .decoder import decoder
from .encoder import hybrid_encoder, lite_encoder
from .spec import Architecture, Weights


def resolve_architecture(
    config: OriginalConfig, settings: Settings, state: dict[str, torch.Tensor] | None = None
) -> Architecture:
    """Decide the architecture from ``config`` (and the checkpoint ``state`` when given)."""
    w = Weights(state)
    parts = config.model_parts()
    kind = _backbone_kind(w, config, settings, parts["backbone"])
    lite = _is_lite(w, config, settings, parts["encoder"])
    if parts["decoder"] not in (None, "DEIMTransformer"):
        raise ConfigError(
            f"{config.path}: decoder {parts['decoder']!r} is not supported; defectfusion converts DEIMv2 "
            f"(DEIMTransformer) checkpoints"
        )

    if kind == "dinov3":
        arch = dinov3_backbone(w, settings)
        backbone_outs = [arch.detector["encoder_hidden_dim"]] * 3
        backbone_strides = [8, 16, 32]
    else:
        arch = hgnet_backbone(w, settings)
        return_idx = [i - 1 for i in arch.backbone["out_indices"]]
        backbone_outs = [arch.backbone["stage_out_channels"][i] for i in return_idx]
        backbone_strides = [2 ** (i + 2) for i in return_idx]
    if lite:
        lite_encoder(w, settings, arch, backbone_outs)
    else:
        hybrid_encoder(w, settings, arch, backbone_outs, backbone_strides)
    decoder(w, config, settings, arch)
    arch.image_size = _resolve_image_size(w, config, settings, arch.scratch["decoder_strides"], arch.verified)
    arch.image_mean, arch.image_std = _normalization(config, settings, arch.kind)
    if config.data.get("use_focal_loss") is False:
        raise ConfigError(f"{config.path}: use_focal_loss: False (softmax classification) is not supported")
    return arch


def _backbone_kind(w: Weights, cfg: OriginalConfig, s: Settings, declared: str | None) -> str:
    names = {"DINOv3STAs": "dinov3", "HGNetv2": "hgnetv2"}
    if w.present:
        if w.any("backbone.dinov3.") or w.any("backbone.sta."):
            kind = "dinov3"
        elif w.any("backbone.stem.") or w.any("backbone.stages."):
            kind = "hgnetv2"
        else:
            raise CheckpointError(
                f"{s.checkpoint}: unknown backbone: expected DINOv3STAs (backbone.dinov3.*) or HGNetv2 "
                f"(backbone.stem.*) weights"
            )
        expected = "DINOv3STAs" if kind == "dinov3" else "HGNetv2"
        if declared is not None and declared != expected:
            raise CheckpointError(
                f"config {cfg.path} selects backbone {declared!r} but the weights {s.checkpoint} are a {expected}"
            )
        return kind
    if declared not in names:
        raise ConfigError(
            f"{cfg.path}: DEIM.backbone is {declared!r}; a DEIMv2 config selects DINOv3STAs or HGNetv2 (set "
            f"DEIM: {{backbone: ...}})"
        )
    return names[declared]


def _is_lite(w: Weights, cfg: OriginalConfig, s: Settings, declared: str | None) -> bool:
    if not w.present:
        if declared not in (None, "HybridEncoder", "LiteEncoder"):
            raise ConfigError(f"{cfg.path}: encoder {declared!r} is not supported (HybridEncoder or LiteEncoder)")
        return declared == "LiteEncoder"
    lite = w.any("encoder.bi_fusion.") or w.any("encoder.fpn_block.")
    encoder_name = "LiteEncoder" if lite else "HybridEncoder"
    if declared is not None and declared != encoder_name:
        raise CheckpointError(f"config {cfg.path} selects encoder {declared!r} but the weights hold a {encoder_name}")
    return lite


# ============================================================================ anchors, size, normalisation


def anchors_for(size: Sequence[int], strides: Sequence[int], eps: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's precomputed encoder anchors (logit space, inf where invalid) for ``size`` = (H, W)."""
    anchors = []
    for level, stride in enumerate(strides):
        h, w = int(size[0] / stride), int(size[1] / stride)
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        xy = (torch.stack([gx, gy], -1).unsqueeze(0) + 0.5) / torch.tensor([w, h], dtype=torch.float32)
        wh = torch.ones_like(xy) * 0.05 * 2.0**level
        anchors.append(torch.cat([xy, wh], -1).reshape(-1, h * w, 4))
    boxes = torch.cat(anchors, 1)
    valid = ((boxes > eps) & (boxes < 1 - eps)).all(-1, keepdim=True)
    logits = torch.where(valid, torch.log(boxes / (1 - boxes)), torch.inf)
    return logits, valid


def _anchors_match(
    size: Sequence[int], strides: Sequence[int], anchors: torch.Tensor, valid: torch.Tensor | None
) -> bool:
    expected, expected_valid = anchors_for(size, strides)
    if expected.shape != anchors.shape:
        return False
    if valid is not None and not torch.equal(valid.bool(), expected_valid):
        return False
    finite = expected_valid.expand_as(expected)
    return bool(torch.allclose(anchors[finite].float(), expected[finite], atol=1e-4))


def _resolve_image_size(
    w: Weights, cfg: OriginalConfig, s: Settings, strides: list[int], verified: list[str]
) -> tuple[int, int]:
    key: tuple[str, ...] = ("eval_spatial_size",)
    size = cfg.data.get("eval_spatial_size")
    if size is None and cfg.section("DEIMTransformer").get("eval_spatial_size") is not None:
        key = ("DEIMTransformer", "eval_spatial_size")
        size = cfg.section("DEIMTransformer")["eval_spatial_size"]
    if size is not None:
        size = s.coerce(*((None, *key) if len(key) == 1 else key), size, tuple[int, int])
    anchors, valid = w.state.get("decoder.anchors"), w.state.get("decoder.valid_mask")
    if anchors is None:
        if size is None:
            s.note("eval_spatial_size", [640, 640], "default", "no anchors in the weights to tell")
            return 640, 640
        s.note("eval_spatial_size", list(size), "config")
        return int(size[0]), int(size[1])
    if size is not None:
        if not _anchors_match(size, strides, anchors, valid):
            raise CheckpointError(
                f"config {cfg.path} and weights {s.checkpoint} disagree: the checkpoint's decoder.anchors were "
                f"not made "
                f"for eval_spatial_size {list(size)} with strides {strides}"
            )
        s.note("eval_spatial_size", list(size), "config", "checked against decoder.anchors")
    else:
        per_pixel = sum(1.0 / st**2 for st in strides)
        side = round(math.sqrt(anchors.shape[1] / per_pixel))
        if not _anchors_match((side, side), strides, anchors, valid):
            raise ConfigError(
                f"{cfg.path}: eval_spatial_size is missing and the anchors in the weights do not fit a square input; "
                f"add eval_spatial_size: [height, width]"
            )
        size = (side, side)
        s.note("eval_spatial_size", list(size), "weights", "decoder.anchors")
    verified.append(f"decoder.anchors, decoder.valid_mask (recomputed for {list(size)}; match)")
    return int(size[0]), int(size[1])


def _normalization(cfg: OriginalConfig, s: Settings, kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    found = cfg.val_normalization()
    if found is not None:
        s.note("image_mean/std", f"{list(found[0])} / {list(found[1])}", "config", "val_dataloader transforms")
        return found
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if kind == "dinov3" else (NO_MEAN, NO_STD)
    s.note("image_mean/std", f"{list(mean)} / {list(std)}", "default", f"no val transforms; {kind} convention")
    return mean, std
