"""The decoder of an original DEIMv2 config: DEIMTransformer (and the class count its heads imply)."""

from __future__ import annotations

import re
from typing import Any

import torch

from ...errors import CheckpointError, ConfigError
from .config import MISSING, OriginalConfig, Settings
from .spec import Architecture, Weights


def decoder(w: Weights, cfg: OriginalConfig, s: Settings, arch: Architecture) -> None:
    sec = "DEIMTransformer"
    det = arch.detector
    layer0 = "decoder.decoder.layers.0."
    hidden = s.resolve(
        sec,
        "hidden_dim",
        field="d_model",
        weights=w.dim("decoder.query_pos_head.layers.0.weight", 0),
        default=256,
        why="query_pos_head",
    )
    layers = s.resolve(
        sec,
        "num_layers",
        field="decoder_layers",
        weights=w.count(r"decoder\.decoder\.layers\.(\d+)\."),
        default=6,
        why="decoder layers",
    )
    scale = w.state.get(layer0 + "cross_attn.num_points_scale")
    points = _points_from_scale(scale) if scale is not None else None
    levels = s.resolve(
        sec,
        "num_levels",
        field="num_feature_levels",
        weights=len(points) if points else MISSING,
        default=3,
        why="num_points_scale",
    )
    points = s.resolve(
        sec,
        "num_points",
        field="decoder_n_points",
        weights=points if points else MISSING,
        default=4,
        same=lambda c, wv: _as_points(c, len(wv)) == wv,
        why="num_points_scale = 1/n per point",
    )
    points = _as_points(points, levels)
    if points is None or len(points) != levels:
        raise ConfigError(f"{cfg.path}: {sec}.num_points must give one count per level ({levels} levels)")
    attn_out = w.dim(layer0 + "cross_attn.attention_weights.weight", 0)
    heads = attn_out // sum(points) if attn_out is not MISSING and attn_out % sum(points) == 0 else MISSING
    heads = s.resolve(
        sec,
        "nhead",
        field="decoder_attention_heads",
        weights=heads,
        default=8,
        why="attention_weights rows / sampling points",
    )
    ffn = s.resolve(
        sec,
        "dim_feedforward",
        field="decoder_ffn_dim",
        weights=w.dim(layer0 + "swish_ffn.w12.weight", 0),
        default=1024,
        same=lambda c, wv: 2 * (c // 2) == wv,
        why="SwiGLU w12 rows",
    )
    n_mlp = w.count(r"decoder\.dec_bbox_head\.0\.layers\.(\d+)\.")
    bins = w.dim(f"decoder.dec_bbox_head.0.layers.{n_mlp - 1}.weight", 0) if w.present else MISSING
    reg_max = s.resolve(
        sec,
        "reg_max",
        field="max_num_bins",
        weights=bins // 4 - 1 if bins is not MISSING else MISSING,
        default=32,
        why="box head outputs = 4 (reg_max + 1)",
    )
    reg_scale = s.resolve(
        sec,
        "reg_scale",
        field="reg_scale",
        weights=_float(w.scalar("decoder.reg_scale")),
        default=4.0,
        why="decoder.reg_scale",
    )
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
    arch.num_classes = s.resolve(
        None, "num_classes", expect=int, weights=num_classes, default=80, why="score head rows"
    )
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
            for k in w.state
            if k.startswith("decoder.dec_bbox_head.0.")
            for i in range(1, layers)
            if k.replace("dec_bbox_head.0.", f"dec_bbox_head.{i}.", 1) in w.state
        )
    query_select = s.resolve(sec, "query_select_method", expect=str, default="default")
    if query_select != "default":
        raise ConfigError(f"{cfg.path}: {sec}.query_select_method {query_select!r} is not supported (only 'default')")
    layer_scale = s.resolve(sec, "layer_scale", field="layer_scale", default=1)
    if layer_scale != 1:
        raise ConfigError(f"{cfg.path}: {sec}.layer_scale {layer_scale} is not supported (only 1, as DEIMv2 uses)")
    feat_channels = s.resolve(
        sec,
        "feat_channels",
        field="decoder_in_channels",
        weights=arch.scratch["encoder_outputs"],
        why="the encoder's outputs",
    )
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
        learn_initial_query=s.resolve(
            sec,
            "learn_query_content",
            field="learn_initial_query",
            weights=w.flag(w.has("decoder.tgt_embed.weight")),
            default=False,
            why="decoder.tgt_embed",
        ),
        eval_idx=s.resolve(sec, "eval_idx", field="eval_idx", default=-1),
        decoder_method=s.resolve(sec, "cross_attn_method", field="decoder_method", default="default"),
        max_num_bins=reg_max,
        reg_scale=reg_scale,
        up=up,
        layer_scale=1,
        use_gateway=s.resolve(
            sec,
            "use_gateway",
            field="use_gateway",
            weights=w.flag(w.has(layer0 + "gateway.gate.weight")),
            default=True,
            why="gateway.*",
        ),
        share_bbox_head=s.resolve(
            sec, "share_bbox_head", field="share_bbox_head", weights=share, default=False, why="identical box heads"
        ),
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
        if n < 1 or i + n > len(values) or any(abs(v - 1.0 / n) > 1e-6 for v in values[i : i + n]):
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
