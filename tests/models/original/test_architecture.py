"""Architectures of the original repository's released configs, built from the YAML alone.

The configs are ``../shared/fixtures/deimv2_original/official_configs`` (the original ``configs/``
tree as released); the tests skip, saying so, when that folder is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from defectfusion.config import ModelConfig
from defectfusion.errors import ConfigError
from defectfusion.models.detector import detector_config
from defectfusion.models.original.config import load_original_yaml
from defectfusion.models.original.convert import build_from_original_config
from tests.helpers import ORIGINAL_FIXTURES

OFFICIAL = ORIGINAL_FIXTURES / "official_configs" / "configs" / "deimv2"
CONFIGS = [
    "deimv2_dinov3_s_coco.yml",
    "deimv2_dinov3_m_coco.yml",
    "deimv2_dinov3_l_coco.yml",
    "deimv2_dinov3_x_coco.yml",
    "deimv2_hgnetv2_atto_coco.yml",
    "deimv2_hgnetv2_femto_coco.yml",
    "deimv2_hgnetv2_pico_coco.yml",
    "deimv2_hgnetv2_n_coco.yml",
    "deimv2_hgnetv2_s_coco.yml",
    "deimv2_hgnetv2_m_coco.yml",
    "deimv2_hgnetv2_l_coco.yml",
    "deimv2_hgnetv2_x_coco.yml",
]
# Parameters at 80 classes in the original README (millions, rounded to the digit shown).
README_PARAMS = {
    "deimv2_hgnetv2_atto_coco.yml": 0.5,
    "deimv2_hgnetv2_femto_coco.yml": 1.0,
    "deimv2_hgnetv2_pico_coco.yml": 1.5,
    "deimv2_hgnetv2_n_coco.yml": 3.6,
    "deimv2_dinov3_s_coco.yml": 9.7,
    "deimv2_dinov3_m_coco.yml": 18.1,
    "deimv2_dinov3_l_coco.yml": 32.2,
    "deimv2_dinov3_x_coco.yml": 50.3,
}
PRESET_OF = {
    "dinov3_s": "deimv2_dinov3_s_coco.yml",
    "dinov3_m": "deimv2_dinov3_m_coco.yml",
    "dinov3_l": "deimv2_dinov3_l_coco.yml",
    "dinov3_x": "deimv2_dinov3_x_coco.yml",
    "hgnetv2_n": "deimv2_hgnetv2_n_coco.yml",
    "hgnetv2_pico": "deimv2_hgnetv2_pico_coco.yml",
    "hgnetv2_femto": "deimv2_hgnetv2_femto_coco.yml",
    "hgnetv2_atto": "deimv2_hgnetv2_atto_coco.yml",
}


def official(name: str) -> Path:
    path = OFFICIAL / name
    if not path.is_file():
        pytest.skip(
            f"the original repository's configs {OFFICIAL} are absent (they live in ../shared beside the checkout)"
        )
    return path


def deploy_count(model) -> int:
    """Parameters as the original README counts them: of the deploy model (``model.deploy()``).

    Deploying fuses each RepVGG block's 1x1 branch and both batch norms into one biased 3x3 conv
    (``c*c + 3c`` fewer), folds the norm of every other fused encoder conv into a bias (``c`` fewer)
    and keeps only the last decoder layer's score head. The ViT mask token and ViT-Tiny's unit layer
    scales exist only in transformers' model (no-ops for the original).
    """
    total = sum(p.numel() for p in model.parameters())
    vit = model.config.backbone_config
    for name, param in model.named_parameters():
        if name.endswith("embeddings.mask_token") or (
            ".layer_scale" in name and vit.model_type == "dinov3_vit" and vit.layerscale_value == 1.0
        ):
            total -= param.numel()
    layers = model.config.decoder_layers
    total -= sum(p.numel() for i in range(layers - 1) for p in model.model.decoder.class_embed[i].parameters())
    for name, module in model.model.encoder.named_modules():
        kind = type(module).__name__
        if kind.endswith("RepVggBlock"):
            total -= module.conv2.conv.weight.numel() + 3 * module.conv2.conv.weight.shape[0]
        elif kind.endswith("ConvNormLayer") and ".bottlenecks." not in name and module.conv.bias is None:
            total -= module.conv.weight.shape[0]
    return total


@pytest.mark.parametrize("name", CONFIGS)
def test_every_released_config_builds_the_architecture_it_names(name):
    model, settings = build_from_original_config(official(name), device="meta")
    cfg = model.config
    merged = load_original_yaml(official(name))
    assert cfg.num_labels == 80 and list(model.meta.image_size) == merged["eval_spatial_size"]
    backbone = cfg.backbone_config.model_type
    assert backbone == ("dinov3_vit" if "_dinov3_" in name else "hgnet_v2")
    yaml_text = official(name).read_text()
    # The values the file writes are the ones the model has, with transformers' types.
    layers = re.search(r"DEIMTransformer:(?:\n .*)*?\n  num_layers: (\d+)", yaml_text)
    if layers:
        assert cfg.decoder_layers == int(layers.group(1))
    assert isinstance(cfg.depth_mult, float) and isinstance(cfg.hidden_expansion, float)
    assert cfg.encoder_type == ("lite" if "LiteEncoder" in yaml_text else "hybrid")
    if "_dinov3_m_" in name:
        assert cfg.depth_mult == 1.0 and cfg.hidden_expansion == 0.67 and cfg.d_model == 256  # `depth_mult: 1`
        assert cfg.backbone_config.hidden_size == 256 and cfg.backbone_config.num_attention_heads == 4
        assert cfg.backbone_config.out_indices == [4, 8, 12]  # interaction_indexes [3, 7, 11]
    sources = {item.source for item in settings.items}
    assert sources <= {"config", "default"}  # no weights: nothing can come from them


@pytest.mark.parametrize("name", sorted(README_PARAMS))
def test_parameter_counts_match_the_original_readme(name):
    model, _ = build_from_original_config(official(name), device="meta")
    reported = README_PARAMS[name]
    digits = 1
    half_step = 0.5 * 10**-digits
    total = sum(p.numel() for p in model.parameters()) / 1e6
    # The training-time model: within the README's rounding or 3 %, whichever is larger.
    assert abs(total - reported) <= max(half_step, 0.03 * reported), (total, reported)
    # What explains the difference: the README counts the deploy model; counted that way, every
    # variant lands within the README's rounding.
    deployed = deploy_count(model) / 1e6
    assert abs(deployed - reported) < half_step, (deployed, reported)


@pytest.mark.parametrize("preset", sorted(PRESET_OF))
def test_each_full_size_preset_is_the_released_architecture(preset):
    model, _ = build_from_original_config(official(PRESET_OF[preset]), device="meta")
    names = [f"class_{i}" for i in range(80)]
    ours = detector_config(ModelConfig(preset=preset), names).to_dict()
    theirs = model.config.to_dict()
    ours_backbone, theirs_backbone = ours.pop("backbone_config"), theirs.pop("backbone_config")
    skip = {"defectfusion", "id2label", "label2id"}
    assert {k: v for k, v in ours.items() if k not in skip} == {k: v for k, v in theirs.items() if k not in skip}
    assert ours_backbone == theirs_backbone
    assert tuple(model.meta.image_size) == tuple(
        detector_config(ModelConfig(preset=preset), names).defectfusion["image_size"]
    )


def _user_config(tmp_path: Path, **overrides) -> Path:
    """A phase-1 config as a user writes it: the M config included, their dataset on top."""
    data = {
        "__include__": [str(official("deimv2_dinov3_m_coco.yml"))],
        "num_classes": 6,
        "remap_mscoco_category": False,
        "eval_spatial_size": [1024, 1024],
        "val_dataloader": {
            "dataset": {
                "transforms": {
                    "ops": [
                        {"type": "Resize", "size": [1024, 1024]},
                        {"type": "ConvertPILImage", "dtype": "float32", "scale": True},
                        {"type": "Normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                    ]
                }
            }
        },
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "deimv2_industrial_defects.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_user_config_over_the_m_config_builds_six_classes_at_1024(tmp_path):
    model, settings = build_from_original_config(_user_config(tmp_path))
    assert model.config.num_labels == 6 and model.meta.image_size == (1024, 1024)
    assert model.config.backbone_config.hidden_size == 256 and model.config.decoder_layers == 4
    with torch.no_grad():
        out = model.eval()(pixel_values=torch.zeros(1, 3, 128, 128))
    assert out.logits.shape == (1, 300, 6)
    assert any(item.key == "HybridEncoder.depth_mult" and item.value == 1.0 for item in settings.items)


def test_a_value_of_the_wrong_type_is_one_error_naming_file_key_value_and_type(tmp_path):
    path = _user_config(tmp_path, HybridEncoder={"depth_mult": "one"})
    with pytest.raises(ConfigError) as info:
        build_from_original_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "HybridEncoder.depth_mult is 'one'" in message
    assert "expected a number" in message and "\n" not in message


def test_a_bad_value_in_an_included_file_names_that_file(tmp_path):
    base = tmp_path / "base.yml"
    base.write_text(
        yaml.safe_dump(
            {"__include__": [str(official("deimv2_dinov3_m_coco.yml"))], "DEIMTransformer": {"num_layers": 4.5}}
        )
    )
    user = tmp_path / "user.yml"
    user.write_text(yaml.safe_dump({"__include__": ["base.yml"], "num_classes": 6}))
    with pytest.raises(ConfigError, match=r"base\.yml: DEIMTransformer\.num_layers is 4\.5; expected an integer"):
        build_from_original_config(user)


def test_an_unknown_backbone_name_lists_the_known_ones(tmp_path):
    path = _user_config(tmp_path, DINOv3STAs={"name": "dinov3_vitz16"})
    with pytest.raises(ConfigError, match="dinov3_vits16, dinov3_vits16plus"):
        build_from_original_config(path)
