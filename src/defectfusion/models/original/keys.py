"""Tensor names of the original DEIMv2 code -> transformers' ``Deimv2ForObjectDetection`` names.

Each original tensor is matched by exactly one rule (or split: fused q/k/v projections, the SwiGLU
gate/up pair); the converter verifies the buffers it consumes without storing them (anchors,
RoPE periods). Tensors without a rule are an error that lists them: nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from ...errors import CheckpointError

_MAX_LISTED = 8


_V = r"backbone\.dinov3\.(?:_model\.)?"
_HV = "model.conv_encoder.backbone."
_STA = "model.conv_encoder.spatial_tuning_adapter."
_DL = r"decoder\.decoder\.layers\.(\d+)\."
_HDL = r"model.decoder.layers.\1."

_COMMON_RULES: list[tuple[str, str]] = [
    # DINOv3 / ViT-Tiny backbone
    (_V + r"cls_token", _HV + "embeddings.cls_token"),
    (_V + r"storage_tokens", _HV + "embeddings.register_tokens"),
    (_V + r"patch_embed\.proj\.(weight|bias)", _HV + r"embeddings.patch_embeddings.\1"),
    (_V + r"blocks\.(\d+)\.(norm[12])\.(weight|bias)", _HV + r"model.layer.\1.\2.\3"),
    (_V + r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", _HV + r"model.layer.\1.attention.o_proj.\2"),
    (_V + r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", _HV + r"model.layer.\1.mlp.up_proj.\2"),
    (_V + r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", _HV + r"model.layer.\1.mlp.down_proj.\2"),
    (_V + r"blocks\.(\d+)\.mlp\.w1\.(weight|bias)", _HV + r"model.layer.\1.mlp.gate_proj.\2"),
    (_V + r"blocks\.(\d+)\.mlp\.w2\.(weight|bias)", _HV + r"model.layer.\1.mlp.up_proj.\2"),
    (_V + r"blocks\.(\d+)\.mlp\.w3\.(weight|bias)", _HV + r"model.layer.\1.mlp.down_proj.\2"),
    (_V + r"blocks\.(\d+)\.ls([12])\.gamma", _HV + r"model.layer.\1.layer_scale\2.lambda1"),
    (_V + r"norm\.(weight|bias)", _HV + r"norm.\1"),
    # STA adapter and the fusion projections
    (r"backbone\.sta\.stem\.0\.weight", _STA + "stem_conv.conv.weight"),
    (r"backbone\.sta\.stem\.1\.(\w+)", _STA + r"stem_conv.norm.\1"),
    (r"backbone\.sta\.conv2\.0\.weight", _STA + "conv2.conv.weight"),
    (r"backbone\.sta\.conv2\.1\.(\w+)", _STA + r"conv2.norm.\1"),
    (r"backbone\.sta\.(conv[34])\.1\.weight", _STA + r"\1.conv.weight"),
    (r"backbone\.sta\.(conv[34])\.2\.(\w+)", _STA + r"\1.norm.\2"),
    (r"backbone\.convs\.(\d+)\.weight", r"model.conv_encoder.fusion_proj.\1.conv.weight"),
    (r"backbone\.norms\.(\d+)\.(\w+)", r"model.conv_encoder.fusion_proj.\1.norm.\2"),
    # hybrid encoder
    (
        r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
        r"model.encoder.aifi.\1.layers.\2.self_attn.o_proj.\3",
    ),
    (
        r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.linear1\.(weight|bias)",
        r"model.encoder.aifi.\1.layers.\2.mlp.layers.0.\3",
    ),
    (
        r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.linear2\.(weight|bias)",
        r"model.encoder.aifi.\1.layers.\2.mlp.layers.1.\3",
    ),
    (
        r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.norm1\.(weight|bias)",
        r"model.encoder.aifi.\1.layers.\2.self_attn_layer_norm.\3",
    ),
    (
        r"encoder\.encoder\.(\d+)\.layers\.(\d+)\.norm2\.(weight|bias)",
        r"model.encoder.aifi.\1.layers.\2.final_layer_norm.\3",
    ),
    (r"encoder\.lateral_convs\.(\d+)\.((?:conv|norm)\.\w+)", r"model.encoder.lateral_convs.\1.\2"),
    (
        r"encoder\.downsample_convs\.(\d+)\.0\.cv(\d)\.((?:conv|norm)\.\w+)",
        r"model.encoder.downsample_convs.\1.conv\2.\3",
    ),
    # lite encoder
    (r"encoder\.down_sample([12])\.1\.weight", r"model.encoder.down_conv\1.conv.weight"),
    (r"encoder\.down_sample([12])\.2\.(\w+)", r"model.encoder.down_conv\1.norm.\2"),
    (r"encoder\.bi_fusion\.cv\.((?:conv|norm)\.\w+)", r"model.encoder.bi_fusion_conv.\1"),
    # decoder
    (_DL + r"self_attn\.out_proj\.(weight|bias)", _HDL + r"self_attn.o_proj.\2"),
    (_DL + r"norm1\.scale", _HDL + "self_attn_layer_norm.weight"),
    (
        _DL + r"cross_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)",
        _HDL + r"encoder_attn.\2.\3",
    ),
    (_DL + r"cross_attn\.num_points_scale", _HDL + "encoder_attn.num_points_scale"),
    (_DL + r"gateway\.gate\.(weight|bias)", _HDL + r"gateway.gate.\2"),
    (_DL + r"gateway\.norm\.scale", _HDL + "gateway.norm.weight"),
    (_DL + r"norm2\.scale", _HDL + "encoder_attn_layer_norm.weight"),
    (_DL + r"swish_ffn\.w3\.(weight|bias)", _HDL + r"mlp.down_proj.\2"),
    (_DL + r"norm3\.scale", _HDL + "final_layer_norm.weight"),
    (
        r"decoder\.decoder\.lqe_layers\.(\d+)\.reg_conf\.layers\.(\d+)\.(weight|bias)",
        r"model.decoder.lqe_layers.\1.reg_conf.layers.\2.\3",
    ),
    (r"decoder\.input_proj\.(\d+)\.(?:conv|0)\.weight", r"model.decoder_input_proj.\1.conv.weight"),
    (r"decoder\.input_proj\.(\d+)\.(?:norm|1)\.(\w+)", r"model.decoder_input_proj.\1.norm.\2"),
    (r"decoder\.denoising_class_embed\.weight", "model.denoising_class_embed.weight"),
    (r"decoder\.tgt_embed\.weight", "model.weight_embedding.weight"),
    (r"decoder\.enc_score_head\.(weight|bias)", r"model.enc_score_head.\1"),
    (r"decoder\.enc_bbox_head\.layers\.(\d+)\.(weight|bias)", r"model.enc_bbox_head.layers.\1.\2"),
    (r"decoder\.(query_pos_head|pre_bbox_head)\.layers\.(\d+)\.(weight|bias)", r"model.decoder.\1.layers.\2.\3"),
    (r"decoder\.dec_score_head\.(\d+)\.(weight|bias)", r"model.decoder.class_embed.\1.\2"),
    (r"decoder\.dec_bbox_head\.(\d+)\.layers\.(\d+)\.(weight|bias)", r"model.decoder.bbox_embed.\1.layers.\2.\3"),
]


def _hgnet_rest(rest: str) -> str:
    """HGNetV2 module names: ``conv`` -> ``convolution``, ``bn`` -> ``normalization``."""
    names = {"conv": "convolution", "bn": "normalization"}
    return ".".join(names.get(part, part) for part in rest.split("."))


def _csp_rest(rest: str) -> str | None:
    """RepNCSPELAN block names: cv1/cv4 are the outer convs, cv2/cv3 the two CSP branches."""
    for old, new in (
        ("cv1.", "conv1."),
        ("cv4.", "conv2."),
        ("cv2.0.", "csp_rep1."),
        ("cv2.1.", "csp_rep1.conv2."),
        ("cv3.0.", "csp_rep2."),
        ("cv3.1.", "csp_rep2.conv2."),
    ):
        if rest.startswith(old):
            return new + rest[len(old) :]
    return None


def _callable_rules(encoder_type: str) -> list[tuple[str, Callable[[re.Match], str | None]]]:
    input_proj = "model.conv_encoder.encoder_input_proj." if encoder_type == "hybrid" else "model.encoder.input_proj."
    return [
        (r"backbone\.stem\.(.+)", lambda m: "model.conv_encoder.model.embedder." + _hgnet_rest(m.group(1))),
        (r"backbone\.stages\.(.+)", lambda m: "model.conv_encoder.model.encoder.stages." + _hgnet_rest(m.group(1))),
        (r"encoder\.input_proj\.(\d+)\.((?:conv|norm)\.\w+)", lambda m: f"{input_proj}{m.group(1)}.{m.group(2)}"),
        (
            r"encoder\.(fpn|pan)_blocks\.(\d+)\.(.+)",
            lambda m: (r := _csp_rest(m.group(3))) and f"model.encoder.{m.group(1)}_blocks.{m.group(2)}.{r}",
        ),
        (
            r"encoder\.(fpn|pan)_block\.(.+)",
            lambda m: (r := _csp_rest(m.group(2))) and f"model.encoder.{m.group(1)}_block.{r}",
        ),
    ]


def map_original_state(state: dict[str, torch.Tensor], encoder_type: str) -> dict[str, torch.Tensor]:
    """Rename (and split) the original tensors into transformers' names.

    Buffers the original stores and the converted model recomputes (``decoder.anchors``,
    ``decoder.valid_mask``, RoPE ``periods``) must have been verified by the caller; they are
    consumed here. Any other tensor without a place raises a :class:`CheckpointError`.
    """
    remaining = dict(state)
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        return remaining.pop(key)

    for key in [
        k for k in remaining if k in ("decoder.anchors", "decoder.valid_mask") or k.endswith("rope_embed.periods")
    ]:
        take(key)
    # up / reg_scale are one parameter each, stored under two names in the original.
    for name in ("up", "reg_scale"):
        values = [take(k) for k in (f"decoder.{name}", f"decoder.decoder.{name}") if k in remaining]
        if values:
            if any(not torch.equal(v, values[0]) for v in values[1:]):
                raise CheckpointError(
                    f"decoder.{name} and decoder.decoder.{name} differ; the checkpoint is inconsistent"
                )
            out[f"model.decoder.{name}"] = values[0].to(torch.float32).reshape(1)
    # fused projections: q/k/v of attention, the SwiGLU gate/up pair
    for key in list(remaining):
        if m := re.fullmatch(_V + r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key):
            tensor = take(key)
            if m.group(2) == "bias" and (mask := remaining.pop(key + "_mask", None)) is not None:
                tensor = tensor * mask  # DINOv3 masks the key bias out
            target = f"{_HV}model.layer.{m.group(1)}.attention"
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                out[f"{target}.{part}_proj.{m.group(2)}"] = chunk
        elif m := re.fullmatch(
            r"(encoder\.encoder\.(\d+)\.layers\.(\d+)|decoder\.decoder\.layers\.(\d+))"
            r"\.self_attn\.in_proj_(weight|bias)",
            key,
        ):
            tensor = take(key)
            if m.group(4) is not None:
                target = f"model.decoder.layers.{m.group(4)}.self_attn"
            else:
                target = f"model.encoder.aifi.{m.group(2)}.layers.{m.group(3)}.self_attn"
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                out[f"{target}.{part}_proj.{m.group(5)}"] = chunk
        elif m := re.fullmatch(_DL + r"swish_ffn\.w12\.(weight|bias)", key):
            gate, up = take(key).chunk(2, dim=0)
            out[f"model.decoder.layers.{m.group(1)}.mlp.gate_proj.{m.group(2)}"] = gate
            out[f"model.decoder.layers.{m.group(1)}.mlp.up_proj.{m.group(2)}"] = up
        elif m := re.fullmatch(_V + "mask_token", key):
            out[_HV + "embeddings.mask_token"] = take(key).reshape(1, 1, -1)

    rules: list[tuple[re.Pattern, Any]] = [(re.compile(p), t) for p, t in _COMMON_RULES]
    rules += [(re.compile(p), f) for p, f in _callable_rules(encoder_type)]
    for key in list(remaining):
        for pattern, target in rules:
            if m := pattern.fullmatch(key):
                new = target(m) if callable(target) else m.expand(target)
                if new:
                    out[new] = take(key)
                break
    if remaining:
        names = list(remaining)
        raise CheckpointError(
            f"{len(names)} tensor(s) of the checkpoint have no place in a DEIMv2 model: "
            f"{', '.join(names[:_MAX_LISTED])}{' ...' if len(names) > _MAX_LISTED else ''}"
        )
    return out


# Tensors transformers' model has and the original does not; each is a no-op for the original's maths.
_MODEL_ONLY: list[tuple[re.Pattern, Callable[[torch.Tensor], bool], str]] = [
    (
        re.compile(r"model\.conv_encoder\.backbone\.embeddings\.mask_token"),
        lambda t: True,
        "ViT mask token (used only for masked pre-training)",
    ),
    (
        re.compile(r"model\.conv_encoder\.backbone\.embeddings\.register_tokens"),
        lambda t: t.numel() == 0,
        "ViT register tokens (none)",
    ),
    (
        re.compile(r"model\.conv_encoder\.backbone\.model\.layer\.\d+\.layer_scale[12]\.lambda1"),
        lambda t: bool((t == 1).all()),
        "ViT layer scales (1.0: the original has none)",
    ),
    (
        re.compile(r".*\.num_batches_tracked"),
        lambda t: True,
        "batch-norm batch counters (frozen norms store none; unused with a momentum)",
    ),
]


def fill_model_only(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Add the model-only tensors (no-ops for the original) that ``state`` lacks; returns what was added."""
    filled = []
    for name, tensor in model.state_dict().items():
        if name in state:
            continue
        for pattern, ok, why in _MODEL_ONLY:
            if pattern.fullmatch(name) and ok(tensor):
                state[name] = tensor.clone()
                if why not in filled:
                    filled.append(why)
                break
    return filled
