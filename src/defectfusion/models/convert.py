"""Convert checkpoints written by the original DEIMv2 code into defectfusion detector folders.

The original solver saves ``{'model': state, 'ema': {'module': state, 'updates': n}, ...}``
with ``torch.save``; its YAML config (with ``__include__`` files) describes the architecture.
:func:`convert_original` reads both, decides every architecture value (from the YAML, checked
against the tensor shapes; from the shapes where the YAML is silent; else the original code's
default; else an error naming the key), builds a :class:`DefectDetector` with the original
semantics (:mod:`.semantics`), moves every tensor to its place and writes ``config.json`` +
``model.safetensors``.

Safety: the file is read with ``torch.load(weights_only=True)`` (or safetensors); nothing in it
is executed. Exactness: every tensor of the checkpoint lands in the model or is a buffer that is
recomputed and verified here (anchors, RoPE periods); every tensor of the model comes from the
checkpoint or is a documented no-op (ViT mask/register tokens, unit layer scales). Anything else
is an error that lists the names, and nothing is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, Deimv2Config

from ..errors import CheckpointError, ConfigError, DataError
from ..io import read_json
from .checkpoint import CONFIG_NAME, load_state_into, save_detector
from .detector import META_KEY, DefectDetector, DetectorMeta
from .original_config import MISSING, OriginalConfig, Settings
from .original_keys import fill_model_only, map_original_state
from .presets import IMAGENET_MEAN, IMAGENET_STD, NO_MEAN, NO_STD, _vit, hgnetv2_backbone

WEIGHT_CHOICES = ("ema", "model")
_MAX_LISTED = 8


# ============================================================================ reading the file


@dataclass
class OriginalCheckpoint:
    """The weights chosen from an original DEIMv2 checkpoint file."""

    path: Path
    state: dict[str, torch.Tensor]
    weights: str  # "ema" | "model" | "state_dict"
    available: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes one CheckpointError line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        text = " ".join(str(exc).split())
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused:
            raise CheckpointError(
                f"{path}: the file holds a pickled Python object ({refused.group(1)}) besides tensors; defectfusion "
                f"reads checkpoints with weights_only=True and never runs code from a file. Re-save the weights as "
                f"a plain state dict (or safetensors) and convert that"
            ) from None
        if "central directory" in text or "zip archive" in text or isinstance(exc, EOFError):
            reason = "the file is truncated or damaged"
        elif "invalid load key" in text or "magic number" in text or "UnpicklingError" in type(exc).__name__:
            reason = "it is not a PyTorch checkpoint"
        else:
            reason = text[:160]
        raise CheckpointError(f"{path}: cannot read the checkpoint: {reason}") from None


def read_checkpoint(path: str | Path, weights: str | None = None) -> OriginalCheckpoint:
    """Read an original DEIMv2 checkpoint safely and choose its ``ema`` or ``model`` weights.

    Args:
        path: the ``.pth`` the original solver wrote (a bare state dict or ``.safetensors`` also work).
        weights: ``"ema"``, ``"model"`` or None: EMA when the file has it (as the original
            evaluation uses), else the model weights.
    """
    path = Path(path).expanduser()
    if weights is not None and weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist" + (" (it is a folder)" if path.exists() else ""))
    if path.suffix == ".safetensors":
        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: cannot read the weights ({exc}); the file is damaged or incomplete") from None
    else:
        obj = _torch_load(path)

    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a DEIMv2 checkpoint (it holds a {type(obj).__name__}, expected a dict)")
    info: dict[str, Any] = {}
    entries: dict[str, Any] = {}
    if "model" in obj or "ema" in obj:
        ema = obj.get("ema")
        if isinstance(ema, dict) and isinstance(ema.get("module"), dict) and ema["module"]:
            entries["ema"] = ema["module"]
            if isinstance(ema.get("updates"), int):
                info["ema_updates"] = ema["updates"]
        if isinstance(obj.get("model"), dict) and obj["model"]:
            entries["model"] = obj["model"]
        for key in ("last_epoch", "date"):
            if isinstance(obj.get(key), int | str):
                info[key] = obj[key]
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        entries["state_dict"] = obj
    if not entries:
        keys = ", ".join(map(str, list(obj)[:_MAX_LISTED])) or "nothing"
        raise CheckpointError(
            f"{path}: not a DEIMv2 checkpoint: expected the original solver's 'model'/'ema' entries or a state dict "
            f"of tensors, found {keys}"
        )
    available = tuple(entries)
    if weights is None:
        chosen = "ema" if "ema" in entries else next(iter(entries))
    elif weights in entries:
        chosen = weights
    elif "state_dict" in entries and weights == "model":
        chosen = "state_dict"
    else:
        raise CheckpointError(f"{path} has no {weights!r} weights; it holds: {', '.join(available)}")
    state = _clean_state(entries[chosen], path, chosen)
    return OriginalCheckpoint(path, state, chosen, available, info)


def _clean_state(state: dict[str, Any], path: Path, entry: str) -> dict[str, torch.Tensor]:
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: '{entry}' is not a state dict of tensors (e.g. {', '.join(bad[:3])})")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    if not any(k.startswith(("decoder.dec_score_head.", "decoder.enc_score_head.")) for k in state):
        sample = ", ".join(list(state)[:4])
        raise CheckpointError(
            f"{path}: '{entry}' is not a DEIMv2 model: it has no DEIMTransformer score heads "
            f"(decoder.dec_score_head.*); its tensors are named e.g. {sample}"
        )
    return dict(state)


# ============================================================================ reading shapes


class _Weights:
    """Shape queries on an original state dict."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def has(self, key: str) -> bool:
        return key in self.state

    def any(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.state)

    def dim(self, key: str, axis: int) -> Any:
        tensor = self.state.get(key)
        return MISSING if tensor is None or tensor.dim() <= axis else int(tensor.shape[axis])

    def count(self, pattern: str) -> int:
        """Number of distinct integers matched by the group of ``pattern`` at the start of keys."""
        regex = re.compile(pattern)
        return len({m.group(1) for k in self.state if (m := regex.match(k))})

    def scalar(self, key: str) -> Any:
        tensor = self.state.get(key)
        return MISSING if tensor is None or tensor.numel() != 1 else tensor.item()


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


# ============================================================================ architecture


@dataclass
class _Architecture:
    backbone: dict[str, Any]
    detector: dict[str, Any]
    kind: str  # "dinov3" | "hgnetv2"
    vit_prefix: str = ""
    verified: list[str] = field(default_factory=list)


def _resolve_architecture(w: _Weights, cfg: OriginalConfig, settings: Settings) -> _Architecture:
    parts = cfg.model_parts()
    if w.any("backbone.dinov3.") or w.any("backbone.sta."):
        kind = "dinov3"
    elif w.any("backbone.stem.") or w.any("backbone.stages."):
        kind = "hgnetv2"
    else:
        raise CheckpointError(
            f"{settings.checkpoint}: unknown backbone: expected DINOv3STAs (backbone.dinov3.*) or HGNetv2 "
            f"(backbone.stem.*) weights"
        )
    declared = parts["backbone"]
    expected = "DINOv3STAs" if kind == "dinov3" else "HGNetv2"
    if declared is not None and declared != expected:
        raise CheckpointError(
            f"config {cfg.path} selects backbone {declared!r} but the weights {settings.checkpoint} are a {expected}"
        )
    lite = w.any("encoder.bi_fusion.") or w.any("encoder.fpn_block.")
    encoder_name = "LiteEncoder" if lite else "HybridEncoder"
    if parts["encoder"] is not None and parts["encoder"] != encoder_name:
        raise CheckpointError(
            f"config {cfg.path} selects encoder {parts['encoder']!r} but the weights hold a {encoder_name}"
        )
    if parts["decoder"] not in (None, "DEIMTransformer"):
        raise ConfigError(
            f"{cfg.path}: decoder {parts['decoder']!r} is not supported; defectfusion converts DEIMv2 "
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
        _lite_encoder(w, settings, arch)
    else:
        _hybrid_encoder(w, settings, arch, backbone_outs, backbone_strides)
    _decoder(w, cfg, settings, arch)
    return arch


def _dinov3_backbone(w: _Weights, s: Settings) -> _Architecture:
    sec = "DINOv3STAs"
    vit_tiny = w.any("backbone.dinov3._model.")
    prefix = "backbone.dinov3._model." if vit_tiny else "backbone.dinov3."
    name = s.resolve(sec, "name", weights="vit_tiny" if vit_tiny else "dinov3",
                     same=lambda c, _: ("dinov3" in str(c)) != vit_tiny,
                     why="ViT-Tiny(+) weights sit under backbone.dinov3._model, DINOv3 ones under backbone.dinov3")
    embed = w.dim(prefix + "patch_embed.proj.weight", 0)
    if embed is MISSING:
        raise CheckpointError(f"{s.checkpoint}: the ViT patch embedding ({prefix}patch_embed.proj.weight) is missing")
    periods = w.state.get(prefix + "rope_embed.periods")
    heads = MISSING
    if periods is not None and periods.numel() and embed % (4 * periods.numel()) == 0:
        heads = embed // (4 * periods.numel())
    if vit_tiny:  # the original builds ViT-Tiny from these keys; DINOv3 takes them from its name
        embed = s.resolve(sec, "embed_dim", weights=embed, why="patch_embed.proj.weight")
        heads = s.resolve(sec, "num_heads", weights=heads, default=3, why="RoPE periods = head_dim / 4")
    else:
        s.note(f"{sec}.embed_dim", embed, "weights", "patch_embed.proj.weight")
        if heads is MISSING:
            raise CheckpointError(f"{s.checkpoint}: cannot tell the DINOv3 heads: {prefix}rope_embed.periods is missing")
        s.note(f"{sec}.num_heads", heads, "weights", "RoPE periods = head_dim / 4")
    patch = s.resolve(sec, "patch_size", weights=w.dim(prefix + "patch_embed.proj.weight", 2), why="patch kernel")
    depth = w.count(re.escape(prefix) + r"blocks\.(\d+)\.")
    s.note(f"{sec}.depth", depth, "weights", "number of ViT blocks")
    indexes = s.resolve(sec, "interaction_indexes",
                        why="which ViT blocks feed the detector is not stored in the weights")
    if not (isinstance(indexes, list) and len(indexes) == 3 and all(isinstance(i, int) and 0 <= i < depth
                                                                       for i in indexes)):
        raise ConfigError(
            f"{s.config.path}: {sec}.interaction_indexes must list 3 block indexes in 0..{depth - 1}, got {indexes!r}"
        )
    gated = w.has(prefix + "blocks.0.mlp.w1.weight")
    mlp_key = prefix + ("blocks.0.mlp.w1.weight" if gated else "blocks.0.mlp.fc1.weight")
    intermediate = w.dim(mlp_key, 0)
    registers = w.dim(prefix + "storage_tokens", 1)
    registers = 0 if registers is MISSING else registers
    layerscale = w.has(prefix + "blocks.0.ls1.gamma")
    final_norm = w.has(prefix + "norm.weight")
    backbone = _vit(embed, heads, depth, indexes, gated=gated, registers=registers,
                    layerscale=1e-5 if layerscale else 1.0, rescale=None if vit_tiny else 2.0, dinov3=not vit_tiny)
    backbone["intermediate_size"] = intermediate
    backbone["patch_size"] = patch
    backbone["apply_layernorm"] = final_norm
    if vit_tiny and final_norm:
        raise CheckpointError(f"{s.checkpoint}: a ViT-Tiny backbone with a final norm is not a DEIMv2 layout")

    if not w.any("backbone.sta."):
        use_sta = s.resolve(sec, "use_sta", weights=False, why="no backbone.sta.* weights")
        raise ConfigError(f"{s.config.path}: {sec}.use_sta={use_sta}: backbones without the STA adapter are not supported")
    s.resolve(sec, "use_sta", weights=True, why="backbone.sta.* weights")
    inplanes = s.resolve(sec, "conv_inplane", weights=w.dim("backbone.sta.stem.0.weight", 0), why="STA stem conv")
    hidden = s.resolve(sec, "hidden_dim", weights=w.dim("backbone.convs.0.weight", 0), why="backbone.convs.0")
    if w.dim("backbone.convs.0.weight", 1) != embed + 2 * inplanes:
        raise CheckpointError(f"{s.checkpoint}: backbone.convs.0 does not take embed_dim + 2 * conv_inplane channels")
    arch = _Architecture(backbone, {"spatial_tuning_adapter_inplanes": inplanes, "encoder_hidden_dim": hidden},
                         "dinov3", prefix)
    arch.detector["_backbone_name"] = name
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


def _hgnet_backbone(w: _Weights, s: Settings) -> _Architecture:
    sec = "HGNetv2"
    name = s.resolve(sec, "name", why="the HGNetV2 size (B0, Pico, Femto, Atto, ...) is not stored in the weights")
    return_idx = s.resolve(sec, "return_idx", default=[1, 2, 3])
    use_lab = s.resolve(sec, "use_lab", weights=any(".lab." in k for k in w.state if k.startswith("backbone.")),
                        why="learnable affine blocks (.lab.) present")
    act = s.resolve(sec, "act", default="relu")
    if act != "relu":
        raise ConfigError(f"{s.config.path}: {sec}.act {act!r} is not supported; HGNetV2 backbones use ReLU")
    backbone = hgnetv2_backbone(str(name), list(return_idx), bool(use_lab))
    return _Architecture(backbone, {}, "hgnetv2")


def _csp_block(w: _Weights, s: Settings, sec: str, block: str, hidden: int, det: dict[str, Any]) -> None:
    """expansion, depth_mult and the trailing conv of RepNCSPELAN blocks (``block`` = key prefix)."""
    concat_in = w.dim(f"{block}.cv4.conv.weight", 1)
    if concat_in is MISSING:
        raise CheckpointError(f"{s.checkpoint}: {block}.cv4 is missing; not a DEIMv2 encoder")
    c4 = (concat_in - 2 * hidden) // 2
    det["hidden_expansion"] = s.resolve(
        sec, "expansion", weights=(2 * c4 + 1) / hidden, same=lambda c, _: round(float(c) * hidden // 2) == c4,
        why=f"CSP branch width {c4}")
    n = w.count(re.escape(block) + r"\.cv2\.0\.bottlenecks\.(\d+)\.")
    det["depth_mult"] = s.resolve(sec, "depth_mult", weights=n / 3, same=lambda c, _: round(3 * float(c)) == n,
                                  why=f"{n} bottlenecks per CSP branch")
    det["encoder_has_trailing_conv"] = w.has(f"{block}.cv2.1.conv.weight")


def _hybrid_encoder(w: _Weights, s: Settings, arch: _Architecture, backbone_outs: list[int],
                    backbone_strides: list[int]) -> None:
    sec = "HybridEncoder"
    det = arch.detector
    hidden = w.dim("encoder.lateral_convs.0.conv.weight", 0)
    hidden = s.resolve(sec, "hidden_dim", weights=hidden, why="encoder.lateral_convs.0")
    if arch.kind == "dinov3":
        if det["encoder_hidden_dim"] != hidden:
            raise CheckpointError(f"{s.checkpoint}: DINOv3STAs.hidden_dim differs from HybridEncoder.hidden_dim")
        in_channels = backbone_outs
    else:
        n = w.count(r"encoder\.input_proj\.(\d+)\.")
        in_channels = [w.dim(f"encoder.input_proj.{i}.conv.weight", 1) for i in range(n)]
    in_channels = s.resolve(sec, "in_channels", weights=in_channels, why="encoder input projections")
    if list(in_channels) != list(backbone_outs):
        raise CheckpointError(
            f"{s.checkpoint}: the encoder takes {list(in_channels)} channels but the backbone stages give "
            f"{backbone_outs}; check HGNetv2.name/return_idx"
        )
    strides = s.resolve(sec, "feat_strides", default=[8, 16, 32])
    if list(strides) != backbone_strides:
        raise ConfigError(f"{s.config.path}: {sec}.feat_strides {strides} do not match the backbone's {backbone_strides}")
    aifi = w.count(r"encoder\.encoder\.(\d+)\.")
    use_idx = s.resolve(sec, "use_encoder_idx", default=[2])
    if aifi and len(use_idx) != aifi:
        raise CheckpointError(f"{s.checkpoint}: the weights hold {aifi} AIFI encoders but {sec}.use_encoder_idx is {use_idx}")
    layers = w.count(r"encoder\.encoder\.0\.layers\.(\d+)\.")
    det.update(
        encoder_type="hybrid",
        encoder_hidden_dim=hidden,
        encoder_in_channels=list(in_channels),
        feat_strides=list(strides),
        encode_proj_layers=list(use_idx),
        encoder_layers=s.resolve(sec, "num_encoder_layers", weights=layers, why="AIFI layers"),
        encoder_ffn_dim=s.resolve(sec, "dim_feedforward", weights=w.dim("encoder.encoder.0.layers.0.linear1.weight", 0),
                                  default=1024, why="AIFI linear1"),
        encoder_attention_heads=s.resolve(sec, "nhead", default=8),
        encoder_activation_function=s.resolve(sec, "enc_act", default="gelu"),
        activation_function=s.resolve(sec, "act", default="silu"),
        positional_encoding_temperature=s.resolve(sec, "pe_temperature", default=10000),
        encoder_fuse_op=s.resolve(sec, "fuse_op",
                                  weights="sum" if w.dim("encoder.fpn_blocks.0.cv1.conv.weight", 1) == hidden else "cat",
                                  why="FPN block input width"),
    )
    _csp_block(w, s, sec, "encoder.fpn_blocks.0", hidden, det)
    det["_encoder_outputs"] = [hidden] * len(in_channels)
    det["_encoder_strides"] = list(strides)


def _lite_encoder(w: _Weights, s: Settings, arch: _Architecture) -> None:
    sec = "LiteEncoder"
    det = arch.detector
    hidden = s.resolve(sec, "hidden_dim", weights=w.dim("encoder.input_proj.0.conv.weight", 0), why="encoder.input_proj.0")
    n = w.count(r"encoder\.input_proj\.(\d+)\.")
    in_channels = s.resolve(sec, "in_channels", weights=[w.dim(f"encoder.input_proj.{i}.conv.weight", 1) for i in range(n)],
                            why="encoder input projections")
    if arch.kind == "hgnetv2":
        outs = [arch.backbone["stage_out_channels"][i - 1] for i in arch.backbone["out_indices"]]
        if list(in_channels) != outs:
            raise CheckpointError(
                f"{s.checkpoint}: the encoder takes {list(in_channels)} channels but the backbone stages give {outs}; "
                f"check HGNetv2.name/return_idx"
            )
    strides = s.resolve(sec, "feat_strides", default=[16])
    det.update(
        encoder_type="lite",
        encoder_layers=0,
        encoder_hidden_dim=hidden,
        encoder_in_channels=list(in_channels),
        feat_strides=list(strides),
        activation_function=s.resolve(sec, "act", default="silu"),
    )
    _csp_block(w, s, sec, "encoder.fpn_block", hidden, det)
    det["_encoder_outputs"] = [hidden, hidden]
    det["_encoder_strides"] = [strides[-1], strides[-1] * 2]


def _decoder(w: _Weights, cfg: OriginalConfig, s: Settings, arch: _Architecture) -> None:
    sec = "DEIMTransformer"
    det = arch.detector
    layer0 = "decoder.decoder.layers.0."
    hidden = s.resolve(sec, "hidden_dim", weights=w.dim("decoder.query_pos_head.layers.0.weight", 0), why="query_pos_head")
    layers = s.resolve(sec, "num_layers", weights=w.count(r"decoder\.decoder\.layers\.(\d+)\."), why="decoder layers")
    scale = w.state.get(layer0 + "cross_attn.num_points_scale")
    points = _points_from_scale(scale) if scale is not None else None
    levels = s.resolve(sec, "num_levels", weights=len(points) if points else MISSING, default=3,
                       why="num_points_scale")
    points = s.resolve(sec, "num_points", weights=points if points else MISSING, default=4,
                       same=lambda c, wv: _as_points(c, len(wv)) == wv, why="num_points_scale = 1/n per point")
    points = _as_points(points, levels)
    if points is None or len(points) != levels:
        raise ConfigError(f"{cfg.path}: {sec}.num_points must give one count per level ({levels} levels)")
    attn_out = w.dim(layer0 + "cross_attn.attention_weights.weight", 0)
    heads = attn_out // sum(points) if attn_out is not MISSING and attn_out % sum(points) == 0 else MISSING
    heads = s.resolve(sec, "nhead", weights=heads, default=8, why="attention_weights rows / sampling points")
    ffn = w.dim(layer0 + "swish_ffn.w12.weight", 0)
    ffn = s.resolve(sec, "dim_feedforward", weights=ffn, same=lambda c, wv: 2 * (int(c) // 2) == wv,
                    why="SwiGLU w12 rows")
    n_mlp = w.count(r"decoder\.dec_bbox_head\.0\.layers\.(\d+)\.")
    bins = w.dim(f"decoder.dec_bbox_head.0.layers.{n_mlp - 1}.weight", 0)
    reg_max = s.resolve(sec, "reg_max", weights=bins // 4 - 1 if bins is not MISSING else MISSING, default=32,
                        why="box head outputs = 4 (reg_max + 1)")
    reg_scale = s.resolve(sec, "reg_scale", weights=_float(w.scalar("decoder.reg_scale")), default=4.0,
                          why="decoder.reg_scale")
    up = w.scalar("decoder.up")
    up = 0.5 if up is MISSING else float(up)
    s.note(f"{sec}.up", up, "weights" if w.has("decoder.up") else "default", "decoder.up")
    activation = s.resolve(sec, "activation", default="relu")
    mlp_act = s.resolve(sec, "mlp_act", default="relu")
    if activation != mlp_act:
        raise ConfigError(
            f"{cfg.path}: {sec}.activation ({activation}) and mlp_act ({mlp_act}) differ; the converted model uses one "
            f"activation for the box/query heads and the LQE, as every released DEIMv2 config does"
        )
    num_classes = w.dim("decoder.dec_score_head.0.weight", 0)
    if num_classes is MISSING:
        num_classes = w.dim("decoder.enc_score_head.weight", 0)
    det["num_labels"] = s.resolve(None, "num_classes", weights=num_classes, why="score head rows")
    denoising = s.resolve(sec, "num_denoising", default=100)
    if (denoising > 0) != w.has("decoder.denoising_class_embed.weight"):
        raise CheckpointError(
            f"{s.checkpoint}: {sec}.num_denoising is {denoising} but the weights "
            f"{'lack' if denoising > 0 else 'have'} decoder.denoising_class_embed"
        )
    share = layers > 1 and all(torch.equal(w.state[k], w.state[k.replace("dec_bbox_head.0.", f"dec_bbox_head.{i}.", 1)])
                for k in w.state if k.startswith("decoder.dec_bbox_head.0.") for i in range(1, layers)
                if k.replace("dec_bbox_head.0.", f"dec_bbox_head.{i}.", 1) in w.state)
    query_select = s.resolve(sec, "query_select_method", default="default")
    if query_select != "default":
        raise ConfigError(f"{cfg.path}: {sec}.query_select_method {query_select!r} is not supported (only 'default')")
    layer_scale = s.resolve(sec, "layer_scale", default=1)
    if layer_scale != 1:
        raise ConfigError(f"{cfg.path}: {sec}.layer_scale {layer_scale} is not supported (only 1, as DEIMv2 uses)")
    feat_channels = s.resolve(sec, "feat_channels", weights=det["_encoder_outputs"], why="the encoder's outputs")
    strides = list(s.resolve(sec, "feat_strides", default=det["_encoder_strides"]))
    while len(strides) < levels:
        strides.append(strides[-1] * 2)
    lqe = "decoder.decoder.lqe_layers.0.reg_conf.layers."
    lqe_layers = w.count(re.escape(lqe) + r"(\d+)\.")
    det.update(
        d_model=hidden,
        decoder_in_channels=list(feat_channels),
        num_feature_levels=levels,
        decoder_n_points=points,
        decoder_attention_heads=heads,
        decoder_layers=layers,
        decoder_ffn_dim=ffn,
        decoder_activation_function=mlp_act,
        num_queries=s.resolve(sec, "num_queries", default=300),
        num_denoising=denoising,
        label_noise_ratio=float(s.resolve(sec, "label_noise_ratio", default=0.5)),
        box_noise_scale=float(s.resolve(sec, "box_noise_scale", default=1.0)),
        learn_initial_query=s.resolve(sec, "learn_query_content", weights=w.has("decoder.tgt_embed.weight"),
                                      why="decoder.tgt_embed"),
        eval_idx=s.resolve(sec, "eval_idx", default=-1),
        decoder_method=s.resolve(sec, "cross_attn_method", default="default"),
        max_num_bins=reg_max,
        reg_scale=float(reg_scale),
        up=up,
        layer_scale=1,
        use_gateway=s.resolve(sec, "use_gateway", weights=w.has(layer0 + "gateway.gate.weight"), why="gateway.*"),
        share_bbox_head=s.resolve(sec, "share_bbox_head", weights=share, why="identical box heads"),
        lqe_hidden_dim=w.dim(lqe + "0.weight", 0),
        lqe_layers=lqe_layers,
        top_prob_values=w.dim(lqe + "0.weight", 1) // 4 - 1,
        _decoder_strides=strides,
    )


def _as_points(value: Any, levels: int) -> list[int] | None:
    if isinstance(value, int):
        return [value] * levels
    if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def _float(value: Any) -> Any:
    return value if value is MISSING else float(value)


# ============================================================================ anchors, size, normalisation


def _anchors(size: Sequence[int], strides: Sequence[int], eps: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
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
    expected, expected_valid = _anchors(size, strides)
    if expected.shape != anchors.shape:
        return False
    if valid is not None and not torch.equal(valid.bool(), expected_valid):
        return False
    finite = expected_valid.expand_as(expected)
    return bool(torch.allclose(anchors[finite].float(), expected[finite], atol=1e-4))


def _resolve_image_size(w: _Weights, cfg: OriginalConfig, s: Settings, strides: list[int],
                        verified: list[str]) -> tuple[int, int]:
    size = cfg.data.get("eval_spatial_size") or cfg.section("DEIMTransformer").get("eval_spatial_size")
    anchors, valid = w.state.get("decoder.anchors"), w.state.get("decoder.valid_mask")
    if size is not None and not (isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise ConfigError(f"{cfg.path}: eval_spatial_size must be [height, width], got {size!r}")
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
        size = [side, side]
        s.note("eval_spatial_size", size, "weights", "decoder.anchors")
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


# ============================================================================ class names


def class_names_from_annotations(path: str | Path, num_classes: int | None = None) -> list[str]:
    """Class names from a COCO file, for a model trained with ``remap_mscoco_category: False``.

    The original then uses the category id itself as the label, so channel k is the category with
    id k: ids must be 0..C-1, listed in id order (so that defectfusion's datasets, which number
    classes in list order, agree with the model's channels).
    """
    path = Path(path).expanduser()
    data = read_json(path, "annotations file")
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{path}: no 'categories' list; expected COCO categories [{{'id': 0, 'name': ...}}, ...]")
    if not all(isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str) for c in categories):
        raise DataError(f"{path}: every category needs an integer 'id' and a string 'name'")
    ids = [c["id"] for c in categories]
    if sorted(ids) != list(range(len(ids))):
        raise DataError(
            f"{path}: category ids are {ids}; the original DEIMv2 (remap_mscoco_category: False) uses the category id as "
            f"the class channel, so the ids must be 0..{len(ids) - 1}. Pass --class-names in channel order instead"
        )
    if ids != sorted(ids):
        raise DataError(
            f"{path}: categories are listed in the order of ids {ids}, not 0..{len(ids) - 1}; channel k is the category "
            f"with id k, but defectfusion numbers classes in list order. Reorder the categories by id"
        )
    if num_classes is not None and len(ids) != num_classes:
        raise DataError(f"{path}: {len(ids)} categories, but the checkpoint predicts {num_classes} classes")
    return [c["name"] for c in categories]


def _class_names(given: Sequence[str] | None, annotations: str | Path | None, num_classes: int,
                 remap: bool, s: Settings) -> list[str]:
    if given is not None and annotations is not None:
        raise ConfigError("give class names either from annotations or as a list, not both")
    if annotations is not None:
        if remap:
            raise ConfigError(
                f"{s.config.path}: remap_mscoco_category is True (labels are the 80 COCO classes remapped); class names "
                f"cannot come from an annotation file's ids. Pass --class-names in channel order"
            )
        names = class_names_from_annotations(annotations, num_classes)
        s.note("class names", ", ".join(names), "config", f"categories of {annotations}")
        return names
    if given is not None:
        names = [n.strip() for n in given]
        if len(names) != num_classes:
            raise ConfigError(f"{len(names)} class names given, but the checkpoint predicts {num_classes} classes")
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"class names must be unique and non-empty, got {names}")
        s.note("class names", ", ".join(names), "config", "given")
        return names
    names = [f"class_{i}" for i in range(num_classes)]
    s.note("class names", f"class_0 .. class_{num_classes - 1}", "default", "no annotations or names given")
    return names


# ============================================================================ the conversion


@dataclass
class ConversionResult:
    """A converted model and how every value was decided."""

    model: DefectDetector
    checkpoint: OriginalCheckpoint
    settings: Settings
    class_names: list[str]
    verified: list[str]
    filled: list[str]
    out: Path | None = None

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_from_original(checkpoint: OriginalCheckpoint, config: OriginalConfig, *,
                        class_names: Sequence[str] | None = None,
                        annotations: str | Path | None = None) -> ConversionResult:
    """Build the :class:`DefectDetector` that computes what the original model computes (in memory)."""
    s = Settings(config, str(checkpoint.path))
    w = _Weights(checkpoint.state)
    arch = _resolve_architecture(w, config, s)
    det = arch.detector
    size = _resolve_image_size(w, config, s, det.pop("_decoder_strides"), arch.verified)
    for key in [k for k in det if k.startswith("_")]:
        det.pop(key)
    mean, std = _normalization(config, s, arch.kind)
    if config.data.get("use_focal_loss") is False:
        raise ConfigError(f"{config.path}: use_focal_loss: False (softmax classification) is not supported")
    remap = bool(config.data.get("remap_mscoco_category", False))
    num_classes = det.pop("num_labels")
    names = _class_names(class_names, annotations, num_classes, remap, s)
    num_top = config.section("PostProcessor").get("num_top_queries", 300)

    meta = DetectorMeta(
        preset=None, semantics="original", image_size=size, image_mean=tuple(mean), image_std=tuple(std),
        extra={
            "num_top_queries": num_top,
            "converted_from": {
                "checkpoint": str(checkpoint.path), "config": str(config.path), "weights": checkpoint.weights,
                **checkpoint.info, "remap_mscoco_category": remap,
            },
        },
    )
    backbone = dict(arch.backbone)
    try:
        backbone_config = AutoConfig.for_model(backbone.pop("model_type"), **backbone)
        hf_config = Deimv2Config(
            backbone_config=backbone_config, initializer_bias_prior_prob=0.01, freeze_backbone_batch_norms=False,
            eval_size=None, anchor_image_size=None, num_labels=num_classes, id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, **det,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{config.path}: the architecture it describes is not a valid DEIMv2 model: {exc}") from None
    setattr(hf_config, META_KEY, meta.to_dict())
    model = DefectDetector(hf_config)
    state = map_original_state(checkpoint.state, hf_config.encoder_type)
    filled = fill_model_only(model, state)
    load_state_into(model, state, f"{checkpoint.path} ({checkpoint.weights} weights) with config {config.path}")
    model.eval()
    return ConversionResult(model, checkpoint, s, names, arch.verified, filled)


def convert_original(checkpoint: str | Path, config: str | Path, out: str | Path | None = None, *,
                     weights: str | None = None, class_names: Sequence[str] | None = None,
                     annotations: str | Path | None = None) -> ConversionResult:
    """Convert an original DEIMv2 checkpoint + YAML into a detector folder ``load_detector`` reads.

    Everything is checked before anything is written; on any error no output folder exists.

    Args:
        checkpoint: the original ``.pth`` (e.g. ``best_stg1.pth``).
        config: the original YAML it was trained with (``__include__`` files are followed).
        out: the folder to write (``config.json`` + ``model.safetensors``); None converts in memory.
        weights: ``"ema"`` or ``"model"``; default: EMA when present, as the original evaluates.
        class_names: names in channel order, or ``annotations``: a COCO json whose category ids are
            the channels (0..C-1); default ``class_0 ..``.
    """
    out_path = Path(out).expanduser() if out is not None else None
    if out_path is not None and out_path.exists():
        if not out_path.is_dir():
            raise ConfigError(f"--out {out_path} is a file; give a folder to write the converted model to")
        if any(out_path.iterdir()) and not (out_path / CONFIG_NAME).is_file():
            raise ConfigError(f"--out {out_path} is a non-empty folder that is not a detector folder; refusing to replace it")
    original_config = OriginalConfig.load(config)
    result = build_from_original(read_checkpoint(checkpoint, weights), original_config,
                                 class_names=class_names, annotations=annotations)
    if out_path is not None:
        result.out = save_detector(result.model, out_path)
    return result
