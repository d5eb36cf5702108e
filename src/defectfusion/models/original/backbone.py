"""The backbones of an original DEIMv2 config: DINOv3STAs (ViT-Tiny(+) or DINOv3 + STA) and HGNetv2."""

from __future__ import annotations

import re
from typing import Any

import torch

from ...errors import CheckpointError, ConfigError
from ..presets import hgnetv2_backbone, vit_backbone
from .config import MISSING, Settings
from .spec import Architecture, Weights

# The original DinoVisionTransformer builds these from the name alone (DINOv3's hub entry points).
DINOV3_VITS: dict[str, dict[str, Any]] = {
    "dinov3_vits16": {"embed": 384, "heads": 6, "depth": 12, "ffn_ratio": 4, "gated": False},
    "dinov3_vits16plus": {"embed": 384, "heads": 6, "depth": 12, "ffn_ratio": 6, "gated": True},
}
VIT_TINY_DEPTH = 12  # DINOv3STAs does not pass a depth to its ViT-Tiny: always 12 blocks


def dinov3_backbone(w: Weights, s: Settings) -> Architecture:
    sec = "DINOv3STAs"
    vit_tiny_weights = w.any("backbone.dinov3._model.")
    name = s.resolve(
        sec,
        "name",
        expect=str,
        weights=w.flag("vit_tiny" if vit_tiny_weights else "dinov3"),
        same=lambda c, _: ("dinov3" in c) != vit_tiny_weights,
        why="ViT-Tiny(+) weights sit under backbone.dinov3._model, DINOv3 ones under backbone.dinov3",
    )
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
        embed, heads, depth, gated, registers, layerscale, final_norm = (
            MISSING,
            MISSING,
            VIT_TINY_DEPTH,
            False,
            0,
            False,
            False,
        )
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
            raise CheckpointError(
                f"{s.checkpoint}: cannot tell the DINOv3 heads: {prefix}rope_embed.periods is missing"
            )
        s.note(f"{sec}.num_heads", heads, source, "RoPE periods = head_dim / 4" if w.present else f"DINOv3 {name}")
    patch = s.resolve(
        sec,
        "patch_size",
        expect=int,
        weights=w.dim(prefix + "patch_embed.proj.weight", 2),
        default=16,
        why="patch kernel",
    )
    s.note(
        f"{sec}.depth",
        depth,
        "weights" if w.present else "default",
        "number of ViT blocks" if w.present else "the original code's fixed depth",
    )
    indexes = s.resolve(
        sec,
        "interaction_indexes",
        expect=list[int],
        why="which ViT blocks feed the detector is not stored in the weights",
    )
    if not (len(indexes) == 3 and all(0 <= i < depth for i in indexes)):
        raise ConfigError(
            f"{s.config.origin(sec, 'interaction_indexes')}: {sec}.interaction_indexes must list 3 block indexes in "
            f"0..{depth - 1}, got {indexes!r}"
        )
    ffn_ratio = DINOV3_VITS[name]["ffn_ratio"] if not vit_tiny and not w.present else 4
    backbone = vit_backbone(
        embed,
        heads,
        depth,
        indexes,
        ffn_ratio=ffn_ratio,
        gated=gated,
        registers=registers,
        layerscale=1e-5 if layerscale else 1.0,
        rescale=None if vit_tiny else 2.0,
        dinov3=not vit_tiny,
    )
    if intermediate is not None:
        backbone["intermediate_size"] = intermediate
    backbone["patch_size"] = patch
    backbone["apply_layernorm"] = final_norm
    if vit_tiny and final_norm:
        raise CheckpointError(f"{s.checkpoint}: a ViT-Tiny backbone with a final norm is not a DEIMv2 layout")

    use_sta = s.resolve(
        sec, "use_sta", expect=bool, weights=w.flag(w.any("backbone.sta.")), default=True, why="backbone.sta.* weights"
    )
    if not use_sta:
        raise ConfigError(f"{s.config.path}: {sec}.use_sta=False: backbones without the STA adapter are not supported")
    inplanes = s.resolve(
        sec,
        "conv_inplane",
        field="spatial_tuning_adapter_inplanes",
        weights=w.dim("backbone.sta.stem.0.weight", 0),
        default=16,
        why="STA stem conv",
    )
    hidden = s.resolve(
        sec,
        "hidden_dim",
        expect=int,
        weights=w.dim("backbone.convs.0.weight", 0),
        default=embed,
        why="backbone.convs.0",
    )
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


def hgnet_backbone(w: Weights, s: Settings) -> Architecture:
    sec = "HGNetv2"
    name = s.resolve(
        sec, "name", expect=str, why="the HGNetV2 size (B0, Pico, Femto, Atto, ...) is not stored in the weights"
    )
    return_idx = s.resolve(sec, "return_idx", expect=list[int], default=[1, 2, 3])
    use_lab = s.resolve(
        sec,
        "use_lab",
        expect=bool,
        weights=w.flag(any(".lab." in k for k in w.state if k.startswith("backbone."))),
        default=False,
        why="learnable affine blocks (.lab.) present",
    )
    act = s.resolve(sec, "act", expect=str, default="relu")
    if act != "relu":
        raise ConfigError(f"{s.config.path}: {sec}.act {act!r} is not supported; HGNetV2 backbones use ReLU")
    try:
        backbone = hgnetv2_backbone(name, list(return_idx), use_lab)
    except ConfigError as exc:
        raise ConfigError(f"{s.config.origin(sec, 'name')}: {sec}.name: {exc}") from None
    return Architecture(backbone, {}, "hgnetv2")
