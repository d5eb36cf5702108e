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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, Deimv2Config
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..errors import CheckpointError, ConfigError
from .field_types import coerce_kwargs
from .original_config import MISSING, OriginalConfig, Settings
from .presets import IMAGENET_MEAN, IMAGENET_STD, NO_MEAN, NO_STD, hgnetv2_backbone, vit_backbone

# The original DinoVisionTransformer builds these from the name alone (DINOv3's hub entry points).
DINOV3_VITS: dict[str, dict[str, Any]] = {
    "dinov3_vits16": {"embed": 384, "heads": 6, "depth": 12, "ffn_ratio": 4, "gated": False},
    "dinov3_vits16plus": {"embed": 384, "heads": 6, "depth": 12, "ffn_ratio": 6, "gated": True},
}
VIT_TINY_DEPTH = 12  # DINOv3STAs does not pass a depth to its ViT-Tiny: always 12 blocks


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
        backbone = coerce_kwargs(CONFIG_MAPPING[model_type], backbone,
                                 lambda name, exc: settings.field_error(f"{model_type}.{name}", exc))
        detector = coerce_kwargs(Deimv2Config, self.detector, settings.field_error)
        try:
            backbone_config = AutoConfig.for_model(model_type, **backbone)
            return Deimv2Config(
                backbone_config=backbone_config, initializer_bias_prior_prob=0.01, freeze_backbone_batch_norms=False,
                eval_size=None, anchor_image_size=None, num_labels=len(class_names),
                id2label=dict(enumerate(class_names)), label2id={n: i for i, n in enumerate(class_names)}, **detector,
            )
        except (TypeError, ValueError) as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(
                f"{settings.config.path}: the architecture it describes is not a valid DEIMv2 model: {detail}"
            ) from None


def resolve_architecture(config: OriginalConfig, settings: Settings,
                         state: dict[str, torch.Tensor] | None = None) -> Architecture:
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
        arch = _dinov3_backbone(w, settings)
        backbone_outs = [arch.detector["encoder_hidden_dim"]] * 3
        backbone_strides = [8, 16, 32]
    else:
        arch = _hgnet_backbone(w, settings)
        return_idx = [i - 1 for i in arch.backbone["out_indices"]]
        backbone_outs = [arch.backbone["stage_out_channels"][i] for i in return_idx]
        backbone_strides = [2 ** (i + 2) for i in return_idx]
    if lite:
        _lite_encoder(w, settings, arch, backbone_outs)
    else:
        _hybrid_encoder(w, settings, arch, backbone_outs, backbone_strides)
    _decoder(w, config, settings, arch)
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


# ============================================================================ backbones


def _dinov3_backbone(w: Weights, s: Settings) -> Architecture:
    sec = "DINOv3STAs"
    vit_tiny_weights = w.any("backbone.dinov3._model.")
    name = s.resolve(sec, "name", expect=str, weights=w.flag("vit_tiny" if vit_tiny_weights else "dinov3"),
                     same=lambda c, _: ("dinov3" in c) != vit_tiny_weights,
                     why="ViT-Tiny(+) weights sit under backbone.dinov3._model, DINOv3 ones under backbone.dinov3")
    vit_tiny = vit_tiny_weights if w.present else "dinov3" not in name
    prefix = "backbone.dinov3._model." if vit_tiny else "backbone.dinov3."
    if w.present and w.dim(prefix + "patch_embed.proj.weight", 0) is MISSING:
        raise CheckpointError(f"{s.checkpoint}: the ViT patch embedding ({prefix}patch_embed.proj.weight) is missing")
    periods = w.state.get(prefix + "rope_embed.periods")

    if w.present:
        embed = w.dim(prefix + "patch_embed.proj.weight", 0)
        heads = MISSING
        if periods is not None and periods.numel() and embed % (4 * periods.numel()) == 0:
            heads = embed // (4 * periods.numel())
        depth = w.count(re.escape(prefix) + r"blocks\.(\d+)\.")
        gated = w.has(prefix + "blocks.0.mlp.w1.weight")
        intermediate = w.dim(prefix + ("blocks.0.mlp.w1.weight" if gated else "blocks.0.mlp.fc1.weight"), 0)
        registers = w.dim(prefix + "storage_tokens", 1)
        registers = 0 if registers is MISSING else registers
        layerscale = w.has(prefix + "blocks.0.ls1.gamma")
        final_norm = w.has(prefix + "norm.weight")
    elif vit_tiny:
        embed, heads, depth, gated, registers, layerscale, final_norm = MISSING, MISSING, VIT_TINY_DEPTH, False, 0, \
            False, False
        intermediate = None
    else:
        if name not in DINOV3_VITS:
            raise ConfigError(
                f"{s.config.origin(sec, 'name')}: {sec}.name {name!r} is not a DINOv3 backbone the original code "
                f"builds; known: {', '.join(DINOV3_VITS)} (or vit_tiny / vit_tinyplus)"
            )
        table = DINOV3_VITS[name]
        embed, heads, depth, gated = table["embed"], table["heads"], table["depth"], table["gated"]
        registers, layerscale, final_norm, intermediate = 4, True, True, None

    if vit_tiny:  # the original builds ViT-Tiny from these keys; DINOv3 takes them from its name
        embed = s.resolve(sec, "embed_dim", expect=int, weights=embed, default=192, why="patch_embed.proj.weight")
        heads = s.resolve(sec, "num_heads", expect=int, weights=heads, default=3, why="RoPE periods = head_dim / 4")
    else:
        source = "weights" if w.present else "default"
        s.note(f"{sec}.embed_dim", embed, source, "patch_embed.proj.weight" if w.present else f"DINOv3 {name}")
        if heads is MISSING:
            raise CheckpointError(f"{s.checkpoint}: cannot tell the DINOv3 heads: {prefix}rope_embed.periods is missing")
        s.note(f"{sec}.num_heads", heads, source, "RoPE periods = head_dim / 4" if w.present else f"DINOv3 {name}")
    patch = s.resolve(sec, "patch_size", expect=int, weights=w.dim(prefix + "patch_embed.proj.weight", 2), default=16,
                      why="patch kernel")
    s.note(f"{sec}.depth", depth, "weights" if w.present else "default",
           "number of ViT blocks" if w.present else "the original code's fixed depth")
    indexes = s.resolve(sec, "interaction_indexes", expect=list[int],
                        why="which ViT blocks feed the detector is not stored in the weights")
    if not (len(indexes) == 3 and all(0 <= i < depth for i in indexes)):
        raise ConfigError(
            f"{s.config.origin(sec, 'interaction_indexes')}: {sec}.interaction_indexes must list 3 block indexes in "
            f"0..{depth - 1}, got {indexes!r}"
        )
    ffn_ratio = DINOV3_VITS[name]["ffn_ratio"] if not vit_tiny and not w.present else 4
    backbone = vit_backbone(embed, heads, depth, indexes, ffn_ratio=ffn_ratio, gated=gated, registers=registers,
                            layerscale=1e-5 if layerscale else 1.0, rescale=None if vit_tiny else 2.0,
                            dinov3=not vit_tiny)
    if intermediate is not None:
        backbone["intermediate_size"] = intermediate
    backbone["patch_size"] = patch
    backbone["apply_layernorm"] = final_norm
    if vit_tiny and final_norm:
        raise CheckpointError(f"{s.checkpoint}: a ViT-Tiny backbone with a final norm is not a DEIMv2 layout")

    use_sta = s.resolve(sec, "use_sta", expect=bool, weights=w.flag(w.any("backbone.sta.")), default=True,
                        why="backbone.sta.* weights")
    if not use_sta:
        raise ConfigError(f"{s.config.path}: {sec}.use_sta=False: backbones without the STA adapter are not supported")
    inplanes = s.resolve(sec, "conv_inplane", field="spatial_tuning_adapter_inplanes",
                         weights=w.dim("backbone.sta.stem.0.weight", 0), default=16, why="STA stem conv")
    hidden = s.resolve(sec, "hidden_dim", expect=int, weights=w.dim("backbone.convs.0.weight", 0), default=embed,
                       why="backbone.convs.0")
    if w.present and w.dim("backbone.convs.0.weight", 1) != embed + 2 * inplanes:
        raise CheckpointError(f"{s.checkpoint}: backbone.convs.0 does not take embed_dim + 2 * conv_inplane channels")
    arch = Architecture(backbone, {"spatial_tuning_adapter_inplanes": inplanes, "encoder_hidden_dim": hidden}, "dinov3")
    if periods is not None:
        head_dim = embed // heads
        expected = 100.0 ** (torch.arange(head_dim // 4, dtype=torch.float64) * 4 / head_dim)
        if periods.shape != expected.shape or not torch.allclose(periods.double(), expected, rtol=1e-5):
            raise CheckpointError(
                f"{s.checkpoint}: {prefix}rope_embed.periods do not follow RoPE base 100 for head_dim {head_dim}; "
                f"this backbone's position embedding is not supported"
            )
        arch.verified.append(f"{prefix}rope_embed.periods (RoPE base 100, head_dim {head_dim}; recomputed)")
    return arch


def _hgnet_backbone(w: Weights, s: Settings) -> Architecture:
    sec = "HGNetv2"
    name = s.resolve(sec, "name", expect=str,
                     why="the HGNetV2 size (B0, Pico, Femto, Atto, ...) is not stored in the weights")
    return_idx = s.resolve(sec, "return_idx", expect=list[int], default=[1, 2, 3])
    use_lab = s.resolve(sec, "use_lab", expect=bool,
                        weights=w.flag(any(".lab." in k for k in w.state if k.startswith("backbone."))),
                        default=False, why="learnable affine blocks (.lab.) present")
    act = s.resolve(sec, "act", expect=str, default="relu")
    if act != "relu":
        raise ConfigError(f"{s.config.path}: {sec}.act {act!r} is not supported; HGNetV2 backbones use ReLU")
    try:
        backbone = hgnetv2_backbone(name, list(return_idx), use_lab)
    except ConfigError as exc:
        raise ConfigError(f"{s.config.origin(sec, 'name')}: {sec}.name: {exc}") from None
    return Architecture(backbone, {}, "hgnetv2")


# ============================================================================ encoders


def _csp_block(w: Weights, s: Settings, sec: str, block: str, hidden: int, det: dict[str, Any], *,
               trailing_default: bool) -> None:
    """expansion, depth_mult and the trailing conv of RepNCSPELAN blocks (``block`` = key prefix)."""
    if w.present:
        concat_in = w.dim(f"{block}.cv4.conv.weight", 1)
        if concat_in is MISSING:
            raise CheckpointError(f"{s.checkpoint}: {block}.cv4 is missing; not a DEIMv2 encoder")
        c4 = (concat_in - 2 * hidden) // 2
        n = w.count(re.escape(block) + r"\.cv2\.0\.bottlenecks\.(\d+)\.")
        expansion_w, depth_w = (2 * c4 + 1) / hidden, n / 3
        trailing = w.has(f"{block}.cv2.1.conv.weight")
    else:
        c4 = n = MISSING
        expansion_w = depth_w = MISSING
        trailing = trailing_default
    det["hidden_expansion"] = s.resolve(
        sec, "expansion", field="hidden_expansion", weights=expansion_w, default=1.0,
        same=lambda c, _: round(c * hidden // 2) == c4, why=f"CSP branch width {c4}")
    det["depth_mult"] = s.resolve(sec, "depth_mult", field="depth_mult", weights=depth_w, default=1.0,
                                  same=lambda c, _: round(3 * c) == n, why=f"{n} bottlenecks per CSP branch")
    det["encoder_has_trailing_conv"] = trailing


def _hybrid_encoder(w: Weights, s: Settings, arch: Architecture, backbone_outs: list[int],
                    backbone_strides: list[int]) -> None:
    sec = "HybridEncoder"
    det = arch.detector
    hidden = s.resolve(sec, "hidden_dim", field="encoder_hidden_dim",
                       weights=w.dim("encoder.lateral_convs.0.conv.weight", 0), default=256,
                       why="encoder.lateral_convs.0")
    if arch.kind == "dinov3" and det["encoder_hidden_dim"] != hidden:
        raise CheckpointError(
            f"{s.checkpoint or s.config.path}: DINOv3STAs.hidden_dim ({det['encoder_hidden_dim']}) differs from "
            f"HybridEncoder.hidden_dim ({hidden})"
        )
    if arch.kind == "dinov3" or not w.present:
        in_channels_w = backbone_outs
    else:
        n = w.count(r"encoder\.input_proj\.(\d+)\.")
        in_channels_w = [w.dim(f"encoder.input_proj.{i}.conv.weight", 1) for i in range(n)]
    in_channels = s.resolve(sec, "in_channels", field="encoder_in_channels", weights=in_channels_w,
                            why="encoder input projections" if w.present else "the backbone's output stages")
    if list(in_channels) != list(backbone_outs):
        raise CheckpointError(
            f"{s.checkpoint}: the encoder takes {list(in_channels)} channels but the backbone stages give "
            f"{backbone_outs}; check HGNetv2.name/return_idx"
        )
    strides = s.resolve(sec, "feat_strides", field="feat_strides", default=[8, 16, 32])
    if list(strides) != backbone_strides:
        raise ConfigError(f"{s.config.path}: {sec}.feat_strides {strides} do not match the backbone's {backbone_strides}")
    aifi = w.count(r"encoder\.encoder\.(\d+)\.")
    use_idx = s.resolve(sec, "use_encoder_idx", field="encode_proj_layers", default=[2])
    if w.present and aifi and len(use_idx) != aifi:
        raise CheckpointError(f"{s.checkpoint}: the weights hold {aifi} AIFI encoders but {sec}.use_encoder_idx is {use_idx}")
    fuse = MISSING
    if w.present:
        fuse = "sum" if w.dim("encoder.fpn_blocks.0.cv1.conv.weight", 1) == hidden else "cat"
    version = s.resolve(sec, "version", expect=str, default="dfine")
    if version not in ("dfine", "deim"):
        raise ConfigError(
            f"{s.config.origin(sec, 'version')}: {sec}.version {version!r} is not supported; DEIMv2 encoders are "
            f"'dfine' (RepNCSPELAN4) or 'deim' (RepNCSPELAN5)"
        )
    csp_type = s.resolve(sec, "csp_type", expect=str, default="csp")
    if not w.present and version == "dfine" and csp_type != "csp2":
        raise ConfigError(
            f"{s.config.origin(sec, 'csp_type')}: {sec}.csp_type {csp_type!r} with version 'dfine' is not supported "
            f"(transformers implements the csp2 block that every DEIMv2 config uses)"
        )
    det.update(
        encoder_type="hybrid",
        encoder_hidden_dim=hidden,
        encoder_in_channels=list(in_channels),
        feat_strides=list(strides),
        encode_proj_layers=list(use_idx),
        encoder_layers=s.resolve(sec, "num_encoder_layers", field="encoder_layers",
                                 weights=w.count(r"encoder\.encoder\.0\.layers\.(\d+)\."), default=1, why="AIFI layers"),
        encoder_ffn_dim=s.resolve(sec, "dim_feedforward", field="encoder_ffn_dim",
                                  weights=w.dim("encoder.encoder.0.layers.0.linear1.weight", 0), default=1024,
                                  why="AIFI linear1"),
        encoder_attention_heads=s.resolve(sec, "nhead", field="encoder_attention_heads", default=8),
        encoder_activation_function=s.resolve(sec, "enc_act", field="encoder_activation_function", default="gelu"),
        activation_function=s.resolve(sec, "act", field="activation_function", default="silu"),
        positional_encoding_temperature=s.resolve(sec, "pe_temperature", field="positional_encoding_temperature",
                                                  default=10000),
        encoder_fuse_op=s.resolve(sec, "fuse_op", field="encoder_fuse_op", weights=fuse, default="cat",
                                  why="FPN block input width"),
    )
    _csp_block(w, s, sec, "encoder.fpn_blocks.0", hidden, det, trailing_default=version == "dfine")
    if w.present and det["encoder_has_trailing_conv"] != (version == "dfine") and sec in s.config.data \
            and "version" in s.config.section(sec):
        raise CheckpointError(
            f"config {s.config.path} and weights {s.checkpoint} disagree: {sec}.version is {version!r} but the "
            f"weights' CSP blocks are {'RepNCSPELAN4 (dfine)' if det['encoder_has_trailing_conv'] else 'RepNCSPELAN5 (deim)'}"
        )
    arch.scratch["encoder_outputs"] = [hidden] * len(in_channels)
    arch.scratch["encoder_strides"] = list(strides)


def _lite_encoder(w: Weights, s: Settings, arch: Architecture, backbone_outs: list[int]) -> None:
    sec = "LiteEncoder"
    det = arch.detector
    hidden = s.resolve(sec, "hidden_dim", field="encoder_hidden_dim", weights=w.dim("encoder.input_proj.0.conv.weight", 0),
                       default=256, why="encoder.input_proj.0")
    n = w.count(r"encoder\.input_proj\.(\d+)\.")
    in_channels_w = backbone_outs if not w.present else [w.dim(f"encoder.input_proj.{i}.conv.weight", 1)
                                                         for i in range(n)]
    in_channels = s.resolve(sec, "in_channels", field="encoder_in_channels", weights=in_channels_w,
                            why="encoder input projections" if w.present else "the backbone's output stages")
    if arch.kind == "hgnetv2" and list(in_channels) != backbone_outs:
        raise CheckpointError(
            f"{s.checkpoint}: the encoder takes {list(in_channels)} channels but the backbone stages give "
            f"{backbone_outs}; check HGNetv2.name/return_idx"
        )
    strides = s.resolve(sec, "feat_strides", field="feat_strides", default=[16])
    det.update(
        encoder_type="lite",
        encoder_layers=0,
        encoder_hidden_dim=hidden,
        encoder_in_channels=list(in_channels),
        feat_strides=list(strides),
        activation_function=s.resolve(sec, "act", field="activation_function", default="silu"),
    )
    _csp_block(w, s, sec, "encoder.fpn_block", hidden, det, trailing_default=True)
    arch.scratch["encoder_outputs"] = [hidden, hidden]
    arch.scratch["encoder_strides"] = [strides[-1], strides[-1] * 2]


# ============================================================================ decoder


def _decoder(w: Weights, cfg: OriginalConfig, s: Settings, arch: Architecture) -> None:
    sec = "DEIMTransformer"
    det = arch.detector
    layer0 = "decoder.decoder.layers.0."
    hidden = s.resolve(sec, "hidden_dim", field="d_model", weights=w.dim("decoder.query_pos_head.layers.0.weight", 0),
                       default=256, why="query_pos_head")
    layers = s.resolve(sec, "num_layers", field="decoder_layers", weights=w.count(r"decoder\.decoder\.layers\.(\d+)\."),
                       default=6, why="decoder layers")
    scale = w.state.get(layer0 + "cross_attn.num_points_scale")
    points = _points_from_scale(scale) if scale is not None else None
    levels = s.resolve(sec, "num_levels", field="num_feature_levels", weights=len(points) if points else MISSING,
                       default=3, why="num_points_scale")
    points = s.resolve(sec, "num_points", field="decoder_n_points", weights=points if points else MISSING, default=4,
                       same=lambda c, wv: _as_points(c, len(wv)) == wv, why="num_points_scale = 1/n per point")
    points = _as_points(points, levels)
    if points is None or len(points) != levels:
        raise ConfigError(f"{cfg.path}: {sec}.num_points must give one count per level ({levels} levels)")
    attn_out = w.dim(layer0 + "cross_attn.attention_weights.weight", 0)
    heads = attn_out // sum(points) if attn_out is not MISSING and attn_out % sum(points) == 0 else MISSING
    heads = s.resolve(sec, "nhead", field="decoder_attention_heads", weights=heads, default=8,
                      why="attention_weights rows / sampling points")
    ffn = s.resolve(sec, "dim_feedforward", field="decoder_ffn_dim", weights=w.dim(layer0 + "swish_ffn.w12.weight", 0),
                    default=1024, same=lambda c, wv: 2 * (c // 2) == wv, why="SwiGLU w12 rows")
    n_mlp = w.count(r"decoder\.dec_bbox_head\.0\.layers\.(\d+)\.")
    bins = w.dim(f"decoder.dec_bbox_head.0.layers.{n_mlp - 1}.weight", 0) if w.present else MISSING
    reg_max = s.resolve(sec, "reg_max", field="max_num_bins", weights=bins // 4 - 1 if bins is not MISSING else MISSING,
                        default=32, why="box head outputs = 4 (reg_max + 1)")
    reg_scale = s.resolve(sec, "reg_scale", field="reg_scale", weights=_float(w.scalar("decoder.reg_scale")),
                          default=4.0, why="decoder.reg_scale")
    up = w.scalar("decoder.up")
    up = 0.5 if up is MISSING else float(up)
    s.note(f"{sec}.up", up, "weights" if w.has("decoder.up") else "default", "decoder.up")
    activation = s.resolve(sec, "activation", expect=str, default="relu")
    mlp_act = s.resolve(sec, "mlp_act", field="decoder_activation_function", default="relu")
    if activation != mlp_act:
        raise ConfigError(
            f"{cfg.path}: {sec}.activation ({activation}) and mlp_act ({mlp_act}) differ; the converted model uses one "
            f"activation for the box/query heads and the LQE, as every released DEIMv2 config does"
        )
    num_classes = w.dim("decoder.dec_score_head.0.weight", 0)
    if num_classes is MISSING:
        num_classes = w.dim("decoder.enc_score_head.weight", 0)
    arch.num_classes = s.resolve(None, "num_classes", expect=int, weights=num_classes, default=80,
                                 why="score head rows")
    denoising = s.resolve(sec, "num_denoising", field="num_denoising", default=100)
    if w.present and (denoising > 0) != w.has("decoder.denoising_class_embed.weight"):
        raise CheckpointError(
            f"{s.checkpoint}: {sec}.num_denoising is {denoising} but the weights "
            f"{'lack' if denoising > 0 else 'have'} decoder.denoising_class_embed"
        )
    share = MISSING
    if w.present:
        share = layers > 1 and all(
            torch.equal(w.state[k], w.state[k.replace("dec_bbox_head.0.", f"dec_bbox_head.{i}.", 1)])
            for k in w.state if k.startswith("decoder.dec_bbox_head.0.") for i in range(1, layers)
            if k.replace("dec_bbox_head.0.", f"dec_bbox_head.{i}.", 1) in w.state)
    query_select = s.resolve(sec, "query_select_method", expect=str, default="default")
    if query_select != "default":
        raise ConfigError(f"{cfg.path}: {sec}.query_select_method {query_select!r} is not supported (only 'default')")
    layer_scale = s.resolve(sec, "layer_scale", field="layer_scale", default=1)
    if layer_scale != 1:
        raise ConfigError(f"{cfg.path}: {sec}.layer_scale {layer_scale} is not supported (only 1, as DEIMv2 uses)")
    feat_channels = s.resolve(sec, "feat_channels", field="decoder_in_channels", weights=arch.scratch["encoder_outputs"],
                              why="the encoder's outputs")
    strides = list(s.resolve(sec, "feat_strides", expect=list[int], default=arch.scratch["encoder_strides"]))
    while len(strides) < levels:
        strides.append(strides[-1] * 2)
    arch.scratch["decoder_strides"] = strides
    lqe = "decoder.decoder.lqe_layers.0.reg_conf.layers."
    lqe_in = w.dim(lqe + "0.weight", 1)
    det.update(
        d_model=hidden,
        decoder_in_channels=list(feat_channels),
        num_feature_levels=levels,
        decoder_n_points=points,
        decoder_attention_heads=heads,
        decoder_layers=layers,
        decoder_ffn_dim=ffn,
        decoder_activation_function=mlp_act,
        num_queries=s.resolve(sec, "num_queries", field="num_queries", default=300),
        num_denoising=denoising,
        label_noise_ratio=s.resolve(sec, "label_noise_ratio", field="label_noise_ratio", default=0.5),
        box_noise_scale=s.resolve(sec, "box_noise_scale", field="box_noise_scale", default=1.0),
        learn_initial_query=s.resolve(sec, "learn_query_content", field="learn_initial_query",
                                      weights=w.flag(w.has("decoder.tgt_embed.weight")), default=False,
                                      why="decoder.tgt_embed"),
        eval_idx=s.resolve(sec, "eval_idx", field="eval_idx", default=-1),
        decoder_method=s.resolve(sec, "cross_attn_method", field="decoder_method", default="default"),
        max_num_bins=reg_max,
        reg_scale=reg_scale,
        up=up,
        layer_scale=1,
        use_gateway=s.resolve(sec, "use_gateway", field="use_gateway", weights=w.flag(w.has(layer0 + "gateway.gate.weight")),
                              default=True, why="gateway.*"),
        share_bbox_head=s.resolve(sec, "share_bbox_head", field="share_bbox_head", weights=share, default=False,
                                  why="identical box heads"),
        # The LQE is not configurable in the original: 64 hidden, 2 layers, the top 4 probabilities.
        lqe_hidden_dim=64 if not w.present else w.dim(lqe + "0.weight", 0),
        lqe_layers=2 if not w.present else w.count(re.escape(lqe) + r"(\d+)\."),
        top_prob_values=4 if not w.present else lqe_in // 4 - 1,
    )


def _points_from_scale(scale: torch.Tensor) -> list[int] | None:
    """``num_points`` per level from ``num_points_scale`` (``1/n`` repeated ``n`` times per level)."""
    values = scale.double().tolist()
    points, i = [], 0
    while i < len(values):
        if values[i] <= 0:
            return None
        n = round(1.0 / values[i])
        if n < 1 or i + n > len(values) or any(abs(v - 1.0 / n) > 1e-6 for v in values[i:i + n]):
            return None
        points.append(n)
        i += n
    return points


def _as_points(value: Any, levels: int) -> list[int] | None:
    if isinstance(value, int):
        return [value] * levels
    if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def _float(value: Any) -> Any:
    return value if value is MISSING else float(value)


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


def _anchors_match(size: Sequence[int], strides: Sequence[int], anchors: torch.Tensor, valid: torch.Tensor | None) -> bool:
    expected, expected_valid = anchors_for(size, strides)
    if expected.shape != anchors.shape:
        return False
    if valid is not None and not torch.equal(valid.bool(), expected_valid):
        return False
    finite = expected_valid.expand_as(expected)
    return bool(torch.allclose(anchors[finite].float(), expected[finite], atol=1e-4))


def _resolve_image_size(w: Weights, cfg: OriginalConfig, s: Settings, strides: list[int],
                        verified: list[str]) -> tuple[int, int]:
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
                f"config {cfg.path} and weights {s.checkpoint} disagree: the checkpoint's decoder.anchors were not made "
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
