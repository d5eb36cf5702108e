import json

import pytest
import torch
from transformers import Deimv2ForObjectDetection

from defectfusion import load_detector, save_detector
from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.errors import CheckpointError
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=x)
    return out.logits, out.pred_boxes


@pytest.mark.parametrize("preset", ["dinov3_micro", "hgnetv2_micro"])
def test_saved_folder_loads_back_exactly(tmp_path, preset, six_classes):
    torch.manual_seed(0)
    base = build_detector(ModelConfig(preset=preset), six_classes)
    fused = add_fusion(base, FusionConfig(query_selection=True), random_text_embeddings(6, 16, seed=2))
    with torch.no_grad():
        for head in fused.fusion_heads():
            head.gate.fill_(0.2)
    save_detector(fused, tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_detector(tmp_path / "model")
    assert loaded.is_fused and loaded.class_names == six_classes
    assert loaded.meta.fusion.query_selection and loaded.meta.image_size == fused.meta.image_size
    for name, tensor in fused.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    x = torch.randn(1, 3, *fused.meta.image_size)
    for a, b in zip(_outputs(fused, x), _outputs(loaded, x), strict=True):
        assert torch.equal(a, b)


def test_saving_over_an_existing_folder_replaces_it_whole(tmp_path, six_classes):
    model = build_detector(ModelConfig(preset="hgnetv2_micro"), six_classes)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "stale.txt").write_text("old")
    save_detector(model, tmp_path / "m")
    assert not (tmp_path / "m" / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_transformers_save_pretrained_folder_loads_with_transformers_semantics(tmp_path, six_classes):
    torch.manual_seed(0)
    reference = build_detector(ModelConfig(preset="hgnetv2_micro", semantics="transformers"), six_classes)
    config = reference.config
    del config.defectfusion  # what a plain transformers model would write
    hf_model = Deimv2ForObjectDetection(config)
    hf_model.load_state_dict(reference.state_dict())
    hf_model.save_pretrained(tmp_path / "hf")
    loaded = load_detector(tmp_path / "hf")
    assert loaded.meta.semantics == "transformers" and not loaded.is_fused
    x = torch.rand(1, 3, 96, 96)
    for a, b in zip(_outputs(hf_model, x), _outputs(loaded, x), strict=True):
        assert torch.equal(a, b)


def test_bad_checkpoints_fail_with_one_clear_message(tmp_path, six_classes):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_detector(tmp_path / "nope")
    pth = tmp_path / "best_stg1.pth"
    pth.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="defectfusion convert"):
        load_detector(pth)
    model = build_detector(ModelConfig(preset="hgnetv2_micro"), six_classes)
    save_detector(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged or incomplete"):
        load_detector(tmp_path / "m")
    save_detector(model, tmp_path / "m2")
    config = json.loads((tmp_path / "m2" / "config.json").read_text())
    config["num_labels"] = 3
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    config.pop("label2id")
    (tmp_path / "m2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="another shape"):
        load_detector(tmp_path / "m2")
    (tmp_path / "m2" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="'bert'"):
        load_detector(tmp_path / "m2")
