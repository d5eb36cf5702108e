"""Pretrained backbone weights into a randomly initialised detector (option 2, baselines from scratch)."""

from __future__ import annotations

import pytest
import torch

from defectfusion.commands.convert import convert_original
from defectfusion.config import ModelConfig
from defectfusion.errors import CheckpointError
from defectfusion.models.backbone_weights import load_backbone_weights
from defectfusion.models.detector import DefectDetector, build_detector
from defectfusion.models.groups import parameter_group
from tests.helpers import ORIGINAL_FIXTURES

pytestmark = pytest.mark.usefixtures("one_thread")


def _fixture(name):
    folder = ORIGINAL_FIXTURES / name
    if not (folder / "checkpoint.pth").is_file():
        pytest.skip(f"original DEIMv2 fixture {folder} is absent (it lives in ../shared beside the checkout)")
    return folder


@pytest.mark.parametrize(("name", "inner"), [("mini_dinov3", "backbone.dinov3._model."), ("mini_hgnetv2", "backbone.")])
def test_the_original_backbone_files_fill_exactly_the_backbone(tmp_path, name, inner):
    folder = _fixture(name)
    trained = convert_original(folder / "checkpoint.pth", folder / "config.yml").model
    # The file the original configs name in weights_path: the backbone's own tensors, no prefix.
    state = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)["ema"]["module"]
    own = {k[len(inner) :]: v for k, v in state.items() if k.startswith(inner)}
    torch.save(own, tmp_path / "backbone.pt")

    torch.manual_seed(1)
    fresh = DefectDetector(trained.config)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    filled = load_backbone_weights(fresh, tmp_path / "backbone.pt")
    assert filled and {parameter_group(k) for k in filled} == {"backbone"}
    after, reference = fresh.state_dict(), trained.state_dict()
    for key in after:
        if parameter_group(key) == "backbone":
            assert torch.equal(after[key], reference[key]), key
        else:
            assert torch.equal(after[key], before[key]), key


def test_a_transformers_backbone_folder_loads(tmp_path):
    torch.manual_seed(0)
    donor = build_detector(ModelConfig(preset="dinov3_micro"), ["a", "b"])
    donor.model.conv_encoder.backbone.save_pretrained(tmp_path / "vit")
    torch.manual_seed(1)
    fresh = build_detector(ModelConfig(preset="dinov3_micro"), ["a", "b"])
    load_backbone_weights(fresh, tmp_path / "vit")
    donor_state = donor.model.conv_encoder.backbone.state_dict()
    for key, value in fresh.model.conv_encoder.backbone.state_dict().items():
        assert torch.equal(value, donor_state[key]), key


def test_weights_of_another_backbone_are_one_error(tmp_path):
    folder = _fixture("mini_dinov3")
    state = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    torch.save({k: v for k, v in state.items() if k.startswith("backbone.")}, tmp_path / "other.pt")
    model = build_detector(ModelConfig(preset="dinov3_micro"), ["a", "b"])
    with pytest.raises(CheckpointError, match=r"other\.pt: .*(another head size|does not fit this model's backbone)"):
        load_backbone_weights(model, tmp_path / "other.pt")
    torch.save({"head.weight": torch.zeros(2, 2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not backbone weights this model can take"):
        load_backbone_weights(model, tmp_path / "foreign.pt")
