"""The progressive run end to end on a tiny model: invariants of the phases and the summary."""

import json

import pytest
from safetensors.torch import load_file

from defectfusion.config import GateConfig, load_config
from defectfusion.engine.progressive import apply_gate, run_training, select_phases
from defectfusion.errors import ConfigError
from defectfusion.models.detector import parameter_group
from tests.conftest import write_train_config


@pytest.fixture(scope="module")
def run(tmp_path_factory, synth_data):
    root = tmp_path_factory.mktemp("progressive")
    cfg_path = write_train_config(root / "cfg.yml", synth_data, train={"tensorboard": True})
    out = root / "run"
    summary = run_training(load_config(cfg_path), out, progress=False)
    return out, summary


def _weights(path):
    return load_file(str(path))


def _changed(a, b):
    return {k for k in a if k in b and not (a[k] == b[k]).all()}


def test_run_folder_layout(run):
    out, summary = run
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()
    for phase in ("baseline", "phase1", "phase2", "phase3"):
        folder = out / phase
        for name in ("metrics.jsonl", "results.csv", "result.json", "best/model.safetensors", "best/config.json",
                     "best/metrics.json", "last/model.safetensors", "last/raw.safetensors", "last/trainer_state.pt"):
            assert (folder / name).is_file(), folder / name
        assert any((folder / "tensorboard").iterdir())
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "final" / "model.safetensors").is_file()


def test_phase1_leaves_every_non_fusion_tensor_bit_identical(run):
    out, _ = run
    start = _weights(out / "baseline" / "best" / "model.safetensors")
    for name in ("best/model.safetensors", "last/model.safetensors", "last/raw.safetensors"):
        after = _weights(out / "phase1" / name)
        assert set(after) - set(start) and all(".fusion." in k for k in set(after) - set(start))
        changed = _changed(start, after)
        assert not changed, f"{name}: {sorted(changed)[:5]}"
    raw = _weights(out / "phase1" / "last" / "raw.safetensors")
    best = _weights(out / "phase1" / "best" / "model.safetensors")
    assert any((raw[k] != best[k]).any() for k in raw if ".fusion.proj" in k)  # the fusion did train


def test_phase2_changes_only_fusion_and_class_head(run):
    out, _ = run
    start = _weights(out / "phase1" / "best" / "model.safetensors")
    after = _weights(out / "phase2" / "last" / "raw.safetensors")
    groups = {parameter_group(k) for k in _changed(start, after)}
    assert groups == {"fusion", "class_head"}


def test_phase3_never_touches_the_backbone(run):
    out, _ = run
    start = _weights(out / "phase2" / "best" / "model.safetensors")
    for name in ("last/raw.safetensors", "last/model.safetensors"):
        after = _weights(out / "phase3" / name)
        groups = {parameter_group(k) for k in _changed(start, after)}
        assert "backbone" not in groups and {"encoder", "decoder"} <= groups


def test_phase1_starts_exactly_at_the_baseline(run):
    out, summary = run
    baseline = summary["baseline"]
    first = json.loads((out / "phase1" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 0
    assert first["map50"] == baseline["map50"] and first["map"] == baseline["map"]
    base_record = json.loads((out / "baseline" / "best" / "metrics.json").read_text())
    assert first["per_class_ap50"] == {k: v["ap50"] for k, v in base_record["per_class"].items()}
    assert summary["phases"]["phase1"]["initial_map50"] == baseline["map50"]


def test_final_model_is_never_worse_than_the_baseline(run):
    _, summary = run
    final = summary["final"]
    assert final["map50"] >= summary["baseline"]["map50"]
    assert final["reason"]


def test_gates_decide_with_reasons():
    gate = GateConfig(min=0.80, max=0.82)
    assert apply_gate(gate, "phase2", 0.79, None)["proceed"] is False
    stop = apply_gate(gate, "phase2", 0.83, None)
    assert stop["proceed"] is False and "target reached" in stop["reason"]
    assert apply_gate(gate, "phase2", 0.81, None)["proceed"] is True
    relative = GateConfig(min=0.0, relative_to_baseline=True)
    assert apply_gate(relative, "phase1", 0.50, 0.51)["proceed"] is False
    assert apply_gate(GateConfig(min=0.8), "phase1", None, None)["proceed"] is False


def test_a_gate_stops_the_run_and_the_summary_says_why(tmp_path, synth_data):
    cfg = write_train_config(tmp_path / "cfg.yml", synth_data, order=["baseline", "phase1", "phase2"],
                             gates={"phase1": {"min": 0.99}})
    summary = run_training(load_config(cfg), tmp_path / "run", progress=False)
    assert list(summary["phases"]) == ["baseline", "phase1"]
    assert summary["gates"][0]["proceed"] is False and "below the gate" in summary["gates"][0]["reason"]
    assert not (tmp_path / "run" / "phase2").exists()


def test_phase_selection_and_existing_run_folder(tmp_path, synth_data):
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data))
    assert select_phases(cfg, "2") == ["phase2"] and select_phases(cfg, "baseline") == ["baseline"]
    with pytest.raises(ConfigError, match="no phase '7'"):
        select_phases(cfg, "7")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match="--resume"):
        run_training(cfg, tmp_path / "run", phase="baseline", progress=False)
    with pytest.raises(ConfigError, match="starts from a trained model"):
        run_training(cfg, tmp_path / "run2", phase="2", progress=False)


def test_a_run_resumed_between_phase1_and_phase2_trains_phase2_as_the_uninterrupted_run(tmp_path, synth_data):
    import shutil

    import torch

    from defectfusion.config import ModelConfig
    from defectfusion.data.coco import load_coco
    from defectfusion.models.detector import build_detector

    torch.manual_seed(0)
    names = list(load_coco(synth_data / "train" / "annotations.json").class_names)
    build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), names).save(tmp_path / "start")
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data, order=["phase1", "phase2"],
                                         model={"checkpoint": str(tmp_path / "start")}))
    run_training(cfg, tmp_path / "whole", progress=False)

    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "phase2")
    torch.manual_seed(12345)  # whatever ran before in this process must not matter
    torch.rand(1000)
    run_training(cfg, tmp_path / "resumed", resume=True, progress=False)
    for name in ("last/raw.safetensors", "last/model.safetensors", "best/model.safetensors"):
        whole = _weights(tmp_path / "whole" / "phase2" / name)
        resumed = _weights(tmp_path / "resumed" / "phase2" / name)
        differ = [k for k in whole if not torch.equal(whole[k], resumed[k])]
        assert not differ, f"{name}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    phase1 = _weights(tmp_path / "whole" / "phase1" / "last" / "raw.safetensors")
    assert _changed(phase1, _weights(tmp_path / "whole" / "phase2" / "last" / "raw.safetensors"))  # phase 2 trained


def test_option2_trains_from_random_initialisation_with_a_pretrained_backbone(tmp_path, synth_data):
    import torch

    from defectfusion.config import ModelConfig, packaged_config_path
    from defectfusion.models.detector import build_detector

    torch.manual_seed(7)
    donor = build_detector(ModelConfig(preset="hgnetv2_micro"), ["a"])
    donor.model.conv_encoder.model.save_pretrained(tmp_path / "hgnet")
    option2 = load_config(packaged_config_path("option2_from_scratch"))
    full = option2.phases["full"].model_dump()
    cfg_path = write_train_config(tmp_path / "cfg.yml", synth_data, order=["full"],
                                  phases={"full": {**full, "epochs": 1}},
                                  model={"backbone_weights": str(tmp_path / "hgnet")})
    summary = run_training(load_config(cfg_path), tmp_path / "run", progress=False)
    assert summary["start"]["source"] == f"random initialisation, backbone from {tmp_path / 'hgnet'}"
    assert summary["phases"]["full"]["epochs_run"] == 1
    # The phase's epoch-0 model is the random detector on the donor's backbone.
    first = json.loads((tmp_path / "run" / "full" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 0 and first["map50"] == summary["start"]["map50"]

    with pytest.raises(ConfigError, match="either checkpoint .* or backbone_weights"):
        load_config(cfg_path, ["model.checkpoint=somewhere"])
