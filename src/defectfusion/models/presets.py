"""Named DEIMv2 architectures as ``transformers.Deimv2Config`` keyword arguments.

The full-size presets carry the hyper-parameters of the released DEIMv2 models (DINOv3 S/M/L/X,
HGNetV2 N/Pico/Femto/Atto). The ``*_micro`` presets are tiny random-init versions for tests and
the ``dinov3_demo`` preset is the ~1 M-parameter model the CPU demo trains from scratch.

The full-size presets equal the architectures of the original repository's released configs
(``configs/deimv2/*.yml`` at commit 0fff8d4; a test builds both and compares them); a converted
checkpoint takes its architecture from its own YAML instead.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_MEAN = (0.0, 0.0, 0.0)
NO_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Preset:
    """One architecture: backbone config, Deimv2Config kwargs and the input it expects."""

    name: str
    backbone: str  # "dinov3" | "hgnetv2"
    backbone_config: dict[str, Any]
    detector_config: dict[str, Any]
    image_size: tuple[int, int]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


# Settings every DEIMv2 variant shares (the original's defaults where transformers differs).
_COMMON: dict[str, Any] = {
    "initializer_bias_prior_prob": 0.01,  # the original's prior; transformers uses 1/(C+1)
    "freeze_backbone_batch_norms": False,  # we freeze by parameter group, not by module type
    "decoder_activation_function": "silu",
    "activation_function": "silu",
    "encoder_activation_function": "gelu",
    "encoder_layers": 1,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "num_denoising": 100,
    "label_noise_ratio": 0.5,
    "box_noise_scale": 1.0,
    "max_num_bins": 32,
    "reg_scale": 4.0,
    "layer_scale": 1,
    "eval_idx": -1,
    "encoder_fuse_op": "sum",
}


def vit_backbone(
    hidden: int,
    heads: int,
    layers: int,
    indexes: list[int],
    *,
    ffn_ratio: int = 4,
    gated: bool = False,
    registers: int = 0,
    layerscale: float = 1.0,
    rescale: float | None = None,
    dinov3: bool = False,
) -> dict[str, Any]:
    if gated:
        d = int(hidden * ffn_ratio * 2 / 3)
        intermediate = d + (-d % 8)
    else:
        intermediate = hidden * ffn_ratio
    return {
        "model_type": "dinov3_vit",
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "use_gated_mlp": gated,
        "num_register_tokens": registers,
        "layerscale_value": layerscale,
        "pos_embed_rescale": rescale,
        "rope_theta": 100.0,
        # The original ViT-Tiny(+) keeps the key bias and uses eps 1e-6; DINOv3 (S/S+) has both too.
        "key_bias": True,
        "layer_norm_eps": 1e-6 if not dinov3 else 1e-5,
        "out_indices": [i + 1 for i in indexes],
        # Per-stage LayerNorm exists only in the DINOv3 backbones, not in ViT-Tiny(+).
        "apply_layernorm": dinov3,
        "reshape_hidden_states": True,
    }


def _dinov3(
    name: str,
    vit: dict[str, Any],
    *,
    sta: int,
    hidden: int,
    enc_ffn: int,
    expansion: float,
    depth: float,
    dec_ffn: int,
    layers: int,
    queries: int = 300,
    size: int = 640,
    points: list[int] | None = None,
    denoising: int = 100,
    description: str = "",
    aliases: tuple[str, ...] = (),
) -> Preset:
    detector = {
        **_COMMON,
        "num_denoising": denoising,
        "spatial_tuning_adapter_inplanes": sta,
        "encoder_type": "hybrid",
        "encoder_hidden_dim": hidden,
        "encoder_in_channels": [hidden] * 3,
        "feat_strides": [8, 16, 32],
        "encode_proj_layers": [2],
        "encoder_ffn_dim": enc_ffn,
        "hidden_expansion": expansion,
        "depth_mult": depth,
        "encoder_has_trailing_conv": False,
        "d_model": hidden,
        "decoder_in_channels": [hidden] * 3,
        "num_feature_levels": 3,
        "decoder_n_points": points or [3, 6, 3],
        "decoder_ffn_dim": dec_ffn,
        "decoder_layers": layers,
        "num_queries": queries,
        "use_gateway": True,
        "share_bbox_head": False,
    }
    return Preset(name, "dinov3", vit, detector, (size, size), IMAGENET_MEAN, IMAGENET_STD, description, aliases)


# The original HGNetv2.arch_configs: stem channels, then per stage (in, mid, out, blocks, downsample,
# light block, kernel size, layers per block).
# fmt: off
_HGNET_STAGES: dict[str, tuple[list[int], list[tuple[int, int, int, int, bool, bool, int, int]]]] = {
    "Atto": ([3, 16, 16], [(16, 16, 64, 1, False, False, 3, 3), (64, 32, 256, 1, True, False, 3, 3),
                           (256, 64, 256, 1, True, True, 3, 3)]),
    "Femto": ([3, 16, 16], [(16, 16, 64, 1, False, False, 3, 3), (64, 32, 256, 1, True, False, 3, 3),
                            (256, 64, 512, 1, True, True, 5, 3)]),
    "Pico": ([3, 16, 16], [(16, 16, 64, 1, False, False, 3, 3), (64, 32, 256, 1, True, False, 3, 3),
                           (256, 64, 512, 2, True, True, 5, 3)]),
    "B0": ([3, 16, 16], [(16, 16, 64, 1, False, False, 3, 3), (64, 32, 256, 1, True, False, 3, 3),
                         (256, 64, 512, 2, True, True, 5, 3), (512, 128, 1024, 1, True, True, 5, 3)]),
    "B1": ([3, 24, 32], [(32, 32, 64, 1, False, False, 3, 3), (64, 48, 256, 1, True, False, 3, 3),
                         (256, 96, 512, 2, True, True, 5, 3), (512, 192, 1024, 1, True, True, 5, 3)]),
    "B2": ([3, 24, 32], [(32, 32, 96, 1, False, False, 3, 4), (96, 64, 384, 1, True, False, 3, 4),
                         (384, 128, 768, 3, True, True, 5, 4), (768, 256, 1536, 1, True, True, 5, 4)]),
    "B3": ([3, 24, 32], [(32, 32, 128, 1, False, False, 3, 5), (128, 64, 512, 1, True, False, 3, 5),
                         (512, 128, 1024, 3, True, True, 5, 5), (1024, 256, 2048, 1, True, True, 5, 5)]),
    "B4": ([3, 32, 48], [(48, 48, 128, 1, False, False, 3, 6), (128, 96, 512, 1, True, False, 3, 6),
                         (512, 192, 1024, 3, True, True, 5, 6), (1024, 384, 2048, 1, True, True, 5, 6)]),
    "B5": ([3, 32, 64], [(64, 64, 128, 1, False, False, 3, 6), (128, 128, 512, 2, True, False, 3, 6),
                         (512, 256, 1024, 5, True, True, 5, 6), (1024, 512, 2048, 2, True, True, 5, 6)]),
    "B6": ([3, 48, 96], [(96, 96, 192, 2, False, False, 3, 6), (192, 192, 512, 3, True, False, 3, 6),
                         (512, 384, 1024, 6, True, True, 5, 6), (1024, 768, 2048, 3, True, True, 5, 6)]),
    # Not a released size: a ~0.1 M-parameter HGNetV2 for tests.
    "micro": ([3, 8, 8], [(8, 8, 16, 1, False, False, 3, 2), (16, 16, 32, 1, True, False, 3, 2),
                          (32, 16, 64, 1, True, True, 3, 2)]),
}
# fmt: on


def hgnetv2_backbone(name: str, return_idx: list[int], use_lab: bool = True) -> dict[str, Any]:
    """HGNetV2 backbone config for a released size name (``B0`` .. ``B6``, ``Pico``, ``Femto``, ``Atto``)."""
    if name not in _HGNET_STAGES:
        raise ConfigError(f"unknown HGNetV2 size {name!r}; known: {', '.join(_HGNET_STAGES)}")
    stem, stages = _HGNET_STAGES[name]
    if any(not 0 <= i < len(stages) for i in return_idx):
        raise ConfigError(
            f"HGNetV2 {name} has {len(stages)} stages; return_idx {return_idx} must index 0..{len(stages) - 1}"
        )
    column = lambda i: [stage[i] for stage in stages]  # noqa: E731
    return {
        "model_type": "hgnet_v2",
        "stem_channels": list(stem),
        "stage_in_channels": column(0),
        "stage_mid_channels": column(1),
        "stage_out_channels": column(2),
        "hidden_sizes": column(2),
        "stage_num_blocks": column(3),
        "stage_downsample": column(4),
        "stage_light_block": column(5),
        "stage_kernel_size": column(6),
        "stage_numb_of_layers": column(7),
        "depths": column(7),
        "use_learnable_affine_block": use_lab,
        "hidden_act": "relu",
        "out_indices": [i + 1 for i in return_idx],
    }


def _hgnet_lite(
    name: str,
    backbone: str,
    *,
    in_channels: int,
    hidden: int,
    queries: int,
    dec_ffn: int,
    size: int,
    layers: int = 3,
    denoising: int = 100,
    description: str = "",
    aliases: tuple[str, ...] = (),
) -> Preset:
    detector = {
        **_COMMON,
        "num_denoising": denoising,
        "encoder_type": "lite",
        "encoder_layers": 0,
        "encoder_hidden_dim": hidden,
        "encoder_in_channels": [in_channels],
        "feat_strides": [16],
        "hidden_expansion": 0.34,
        "depth_mult": 0.5,
        "encoder_has_trailing_conv": True,
        "d_model": hidden,
        "decoder_in_channels": [hidden, hidden],
        "num_feature_levels": 2,
        "decoder_n_points": [4, 2],
        "decoder_ffn_dim": dec_ffn,
        "decoder_layers": layers,
        "num_queries": queries,
        "share_bbox_head": True,
        "use_gateway": False,
    }
    return Preset(
        name, "hgnetv2", hgnetv2_backbone(backbone, [2]), detector, (size, size), NO_MEAN, NO_STD, description, aliases
    )


def _build_presets() -> dict[str, Preset]:
    # fmt: off
    presets = [
        _dinov3("dinov3_s", vit_backbone(192, 3, 12, [3, 7, 11]), sta=16, hidden=192, enc_ffn=512, expansion=0.34,
                depth=0.67, dec_ffn=512, layers=4, description="DEIMv2-S: ViT-Tiny distilled + STA, ~9.7 M",
                aliases=("s",)),
        _dinov3("dinov3_m", vit_backbone(256, 4, 12, [3, 7, 11]), sta=16, hidden=256, enc_ffn=512, expansion=0.67,
                depth=1.0, dec_ffn=512, layers=4, description="DEIMv2-M: ViT-Tiny+ distilled + STA, ~18 M",
                aliases=("m",)),
        _dinov3("dinov3_l",
                vit_backbone(384, 6, 12, [5, 8, 11], registers=4, layerscale=1e-5, rescale=2.0, dinov3=True),
                sta=32, hidden=224, enc_ffn=896, expansion=1.0, depth=1.0, dec_ffn=1792, layers=4,
                description="DEIMv2-L: DINOv3 ViT-S/16 + STA, ~32 M", aliases=("l",)),
        _dinov3("dinov3_x", vit_backbone(384, 6, 12, [5, 8, 11], ffn_ratio=6, gated=True, registers=4, layerscale=1e-5,
                                 rescale=2.0, dinov3=True),
                sta=64, hidden=256, enc_ffn=1024, expansion=1.25, depth=1.37, dec_ffn=2048, layers=6,
                description="DEIMv2-X: DINOv3 ViT-S+/16 + STA, ~50 M", aliases=("x",)),
        Preset(
            "hgnetv2_n", "hgnetv2", hgnetv2_backbone("B0", [2, 3]),
            {
                **_COMMON, "encoder_type": "hybrid", "encoder_hidden_dim": 128, "encoder_in_channels": [512, 1024],
                "feat_strides": [16, 32], "encode_proj_layers": [1], "encoder_ffn_dim": 512,
                "hidden_expansion": 0.34, "depth_mult": 0.5, "encoder_has_trailing_conv": True, "d_model": 128,
                "decoder_in_channels": [128, 128], "num_feature_levels": 2, "decoder_n_points": [6, 6],
                "decoder_ffn_dim": 512, "decoder_layers": 3, "num_queries": 300, "share_bbox_head": False,
                "use_gateway": True,
            },
            (640, 640), NO_MEAN, NO_STD, "DEIMv2-N: HGNetV2-B0 + hybrid encoder, ~3.6 M", ("n",),
        ),
        _hgnet_lite("hgnetv2_pico", "Pico", in_channels=512, hidden=112, queries=200, dec_ffn=320, size=640,
                    description="DEIMv2-Pico: HGNetV2-Pico + lite encoder, ~1.5 M", aliases=("pico",)),
        _hgnet_lite("hgnetv2_femto", "Femto", in_channels=512, hidden=96, queries=150, dec_ffn=256, size=416,
                    description="DEIMv2-Femto: HGNetV2-Femto + lite encoder, ~1 M", aliases=("femto",)),
        _hgnet_lite("hgnetv2_atto", "Atto", in_channels=256, hidden=64, queries=100, dec_ffn=160, size=320,
                    description="DEIMv2-Atto: HGNetV2-Atto + lite encoder, ~0.5 M", aliases=("atto",)),
        # Tiny random-init models: tests and the CPU demo.
        _dinov3("dinov3_micro", vit_backbone(64, 2, 3, [0, 1, 2]), sta=8, hidden=64, enc_ffn=128, expansion=0.34,
                depth=0.34, dec_ffn=128, layers=3, queries=30, size=64, denoising=20,
                description="tests: DINOv3-ViT 64-d / 3 blocks + STA, ~0.6 M"),
        # 30 denoising queries instead of 100: on a CPU the decoder's cost follows the query count.
        _dinov3("dinov3_demo", vit_backbone(96, 3, 4, [1, 2, 3]), sta=8, hidden=96, enc_ffn=192, expansion=0.34,
                depth=0.34, dec_ffn=192, layers=3, queries=100, size=256, denoising=30,
                description="CPU demo: DINOv3-ViT 96-d / 4 blocks + STA, ~1.2 M"),
        _hgnet_lite("hgnetv2_micro", "micro", in_channels=64, hidden=32, queries=30, dec_ffn=64, size=96,
                    layers=2, denoising=20, description="tests: HGNetV2-lite 32-d, ~0.1 M"),
    ]
    # fmt: on
    return {p.name: p for p in presets}


PRESETS: dict[str, Preset] = _build_presets()


def get_preset(name: str) -> Preset:
    """Look a preset up by name or alias; unknown names get a did-you-mean error."""
    key = name.strip().lower()
    for preset in PRESETS.values():
        if key == preset.name or key in preset.aliases:
            return preset
    names = list(PRESETS) + [a for p in PRESETS.values() for a in p.aliases]
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"model.preset: unknown preset {name!r}.{hint} Known presets: {', '.join(PRESETS)}.")
