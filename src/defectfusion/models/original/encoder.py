"""The encoders of an original DEIMv2 config: HybridEncoder (AIFI + CSP FPN/PAN) and LiteEncoder."""

from __future__ import annotations

import re
from typing import Any

from ...errors import CheckpointError, ConfigError
from .config import MISSING, Settings
from .spec import Architecture, Weights


def _csp_block(
    w: Weights, s: Settings, sec: str, block: str, hidden: int, det: dict[str, Any], *, trailing_default: bool
) -> None:
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
        sec,
        "expansion",
        field="hidden_expansion",
        weights=expansion_w,
        default=1.0,
        same=lambda c, _: round(c * hidden // 2) == c4,
        why=f"CSP branch width {c4}",
    )
    det["depth_mult"] = s.resolve(
        sec,
        "depth_mult",
        field="depth_mult",
        weights=depth_w,
        default=1.0,
        same=lambda c, _: round(3 * c) == n,
        why=f"{n} bottlenecks per CSP branch",
    )
    det["encoder_has_trailing_conv"] = trailing


def hybrid_encoder(
    w: Weights, s: Settings, arch: Architecture, backbone_outs: list[int], backbone_strides: list[int]
) -> None:
    sec = "HybridEncoder"
    det = arch.detector
    hidden = s.resolve(
        sec,
        "hidden_dim",
        field="encoder_hidden_dim",
        weights=w.dim("encoder.lateral_convs.0.conv.weight", 0),
        default=256,
        why="encoder.lateral_convs.0",
    )
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
    in_channels = s.resolve(
        sec,
        "in_channels",
        field="encoder_in_channels",
        weights=in_channels_w,
        why="encoder input projections" if w.present else "the backbone's output stages",
    )
    if list(in_channels) != list(backbone_outs):
        raise CheckpointError(
            f"{s.checkpoint}: the encoder takes {list(in_channels)} channels but the backbone stages give "
            f"{backbone_outs}; check HGNetv2.name/return_idx"
        )
    strides = s.resolve(sec, "feat_strides", field="feat_strides", default=[8, 16, 32])
    if list(strides) != backbone_strides:
        raise ConfigError(
            f"{s.config.path}: {sec}.feat_strides {strides} do not match the backbone's {backbone_strides}"
        )
    aifi = w.count(r"encoder\.encoder\.(\d+)\.")
    use_idx = s.resolve(sec, "use_encoder_idx", field="encode_proj_layers", default=[2])
    if w.present and aifi and len(use_idx) != aifi:
        raise CheckpointError(
            f"{s.checkpoint}: the weights hold {aifi} AIFI encoders but {sec}.use_encoder_idx is {use_idx}"
        )
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
        encoder_layers=s.resolve(
            sec,
            "num_encoder_layers",
            field="encoder_layers",
            weights=w.count(r"encoder\.encoder\.0\.layers\.(\d+)\."),
            default=1,
            why="AIFI layers",
        ),
        encoder_ffn_dim=s.resolve(
            sec,
            "dim_feedforward",
            field="encoder_ffn_dim",
            weights=w.dim("encoder.encoder.0.layers.0.linear1.weight", 0),
            default=1024,
            why="AIFI linear1",
        ),
        encoder_attention_heads=s.resolve(sec, "nhead", field="encoder_attention_heads", default=8),
        encoder_activation_function=s.resolve(sec, "enc_act", field="encoder_activation_function", default="gelu"),
        activation_function=s.resolve(sec, "act", field="activation_function", default="silu"),
        positional_encoding_temperature=s.resolve(
            sec, "pe_temperature", field="positional_encoding_temperature", default=10000
        ),
        encoder_fuse_op=s.resolve(
            sec, "fuse_op", field="encoder_fuse_op", weights=fuse, default="cat", why="FPN block input width"
        ),
    )
    _csp_block(w, s, sec, "encoder.fpn_blocks.0", hidden, det, trailing_default=version == "dfine")
    if (
        w.present
        and det["encoder_has_trailing_conv"] != (version == "dfine")
        and sec in s.config.data
        and "version" in s.config.section(sec)
    ):
        raise CheckpointError(
            f"config {s.config.path} and weights {s.checkpoint} disagree: {sec}.version is {version!r} but the "
            f"weights' CSP blocks are "
            f"{'RepNCSPELAN4 (dfine)' if det['encoder_has_trailing_conv'] else 'RepNCSPELAN5 (deim)'}"
        )
    arch.scratch["encoder_outputs"] = [hidden] * len(in_channels)
    arch.scratch["encoder_strides"] = list(strides)


def lite_encoder(w: Weights, s: Settings, arch: Architecture, backbone_outs: list[int]) -> None:
    sec = "LiteEncoder"
    det = arch.detector
    hidden = s.resolve(
        sec,
        "hidden_dim",
        field="encoder_hidden_dim",
        weights=w.dim("encoder.input_proj.0.conv.weight", 0),
        default=256,
        why="encoder.input_proj.0",
    )
    n = w.count(r"encoder\.input_proj\.(\d+)\.")
    in_channels_w = (
        backbone_outs if not w.present else [w.dim(f"encoder.input_proj.{i}.conv.weight", 1) for i in range(n)]
    )
    in_channels = s.resolve(
        sec,
        "in_channels",
        field="encoder_in_channels",
        weights=in_channels_w,
        why="encoder input projections" if w.present else "the backbone's output stages",
    )
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
