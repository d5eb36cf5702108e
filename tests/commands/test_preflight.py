"""Every input a run would reject, checked for every run before the first one trains (commands.preflight)."""

from __future__ import annotations

import time

import pytest
import torch

from defectfusion.commands.preflight import RunToCheck, check_config, check_plan, check_runs
from defectfusion.commands.study_plan import plan_study
from defectfusion.commands.train import train
from defectfusion.config import ModelConfig, load_config
from defectfusion.data.coco import load_coco
from defectfusion.errors import ConfigError
from defectfusion.models.checkpoint import save_detector
from defectfusion.models.detector import build_detector
from tests.helpers import write_train_config


@pytest.fixture(scope="module")
def kit(tmp_path_factory, synth_data):
    """A baseline checkpoint of the synthetic classes, one of other classes, and a misspelt descriptions file."""
    root = tmp_path_factory.mktemp("preflight")
    names = list(load_coco(synth_data / "train" / "annotations.json").class_names)
    torch.manual_seed(0)
    micro = ModelConfig(preset="hgnetv2_micro", image_size=(96, 96))
    save_detector(build_detector(micro, names), root / "baseline")
    save_detector(build_detector(micro, ["scratch", "dent"]), root / "other_classes")
    text = (synth_data / "descriptions.yml").read_text()
    assert "name: RAYONES_ARANAZOS" in text
    (root / "typo.yml").write_text(text.replace("name: RAYONES_ARANAZOS", "name: RAYONES_ARANAZSO"))
    (root / "typo.yml").write_text(
        (root / "typo.yml").read_text().replace("[ROTURA_FRACTURA, RAYONES_ARANAZOS]", "[ROTURA_FRACTURA, NORMAL]")
    )
    return root


def _config(kit, synth_data, name="cfg.yml", **sections):
    sections.setdefault("model", {"checkpoint": str(kit / "baseline")})
    return write_train_config(kit / name, synth_data, order=["phase1", "phase2"], **sections)


def test_a_misspelt_class_stops_the_study_in_seconds_before_any_run_folder(kit, synth_data):
    cfg = load_config(_config(kit, synth_data, fusion={"descriptions": str(kit / "typo.yml")}))
    out = kit / "typo_study"
    started = time.monotonic()
    plan = plan_study(cfg, out, arms=["text", "random", "continued"], seeds=2)
    with pytest.raises(ConfigError) as info:
        check_plan(plan)
    assert time.monotonic() - started < 15  # no training: a run alone takes longer than this
    message = str(info.value)
    # the descriptions' own message, once, naming both sides of the typo and the runs it stops
    assert message.count("described classes not in the dataset: RAYONES_ARANAZSO") == 1
    assert "dataset classes without a description: RAYONES_ARANAZOS" in message
    assert message.startswith("study test: fusion.descriptions: ") and str(kit / "typo.yml") in message
    assert "text/100pct/seed0, text/100pct/seed1, random/100pct/seed0, random/100pct/seed1" in message
    assert "continued/" not in message  # a run without a fusion head reads no descriptions
    assert not (out / "runs").exists()


def test_every_problem_is_listed_once_naming_its_field_and_runs(kit, synth_data):
    cfg = load_config(
        _config(
            kit,
            synth_data,
            name="many.yml",
            model={"checkpoint": str(kit / "other_classes")},
            fusion={"descriptions": str(kit / "typo.yml"), "encoder": f"file:{kit / 'missing.safetensors'}"},
            data={"confusable_pair": ["ROTURA_FRACTURA", "RAYONES"], "test": {"annotations": str(kit / "no.json")}},
        )
    )
    plan = plan_study(cfg, kit / "many_study", arms=["text", "continued"], seeds=2)
    with pytest.raises(ConfigError) as info:
        check_plan(plan)
    lines = str(info.value).splitlines()
    assert lines[0] == "study test: 5 problems, nothing was trained; fix them all:"
    body = "\n".join(lines[1:])
    assert len(lines) == 6 and all(line.startswith("  - ") for line in lines[1:])
    assert f"data.test: annotations file {kit / 'no.json'} does not exist" in body
    assert "model.checkpoint: " in body and "trained for classes ['scratch', 'dent']" in body
    assert "unknown class 'RAYONES'" in body and "Did you mean 'RAYONES_ARANAZOS'?" in body
    assert "fusion.encoder: embeddings file" in body and "missing.safetensors" in body
    assert "RAYONES_ARANAZSO" in body
    by_field = {line.split(":")[0].strip(" -"): line for line in lines[1:]}
    assert by_field["data.test"].endswith("[all 4 runs]")  # identical across runs: once, with the runs
    assert by_field["fusion.descriptions"].endswith("[text/100pct/seed0, text/100pct/seed1]")


def test_checkpoint_encoder_and_device_are_read_not_loaded(kit, synth_data):
    cfg = load_config(
        _config(
            kit,
            synth_data,
            name="inputs.yml",
            model={"checkpoint": str(kit / "nowhere")},
            fusion={"encoder": "word2vec:big"},
            train={"device": "tpu"},
        )
    )
    with pytest.raises(ConfigError) as info:
        check_config(cfg, "inputs.yml")
    message = str(info.value)
    assert "model.checkpoint: checkpoint" in message and "nowhere' does not exist" in message
    assert "fusion.encoder: unknown text encoder kind 'word2vec'" in message
    assert "train.device must be auto, cpu, cuda or cuda:N, got 'tpu'" in message


def test_a_phase_that_needs_a_trained_start_without_one_is_named(kit, synth_data):
    cfg = load_config(_config(kit, synth_data, name="nostart.yml", model={"checkpoint": None}))
    with pytest.raises(ConfigError, match=r"nostart.yml: model.checkpoint: phase 'phase1' starts from a trained model"):
        check_runs([RunToCheck("nostart.yml", cfg)])


def test_a_good_study_passes_and_config_files_are_read_too(kit, synth_data):
    path = _config(kit, synth_data, name="good.yml")
    plan = plan_study(load_config(path), kit / "good_study", arms=["text", "random", "continued"], seeds=1)
    started = time.monotonic()
    check_plan(plan)
    check_runs([RunToCheck("from file", path)])
    assert time.monotonic() - started < 10
    with pytest.raises(ConfigError, match=r"broken: config: .*bad.yml.*unknown key 'trian'"):
        (kit / "bad.yml").write_text("trian: {}\n")
        check_runs([RunToCheck("broken", kit / "bad.yml")])


def test_train_refuses_the_same_config_before_training(kit, synth_data, tmp_path):
    path = _config(kit, synth_data, name="train_typo.yml", fusion={"descriptions": str(kit / "typo.yml")})
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        train(path, tmp_path / "run", progress=False)
    assert time.monotonic() - started < 15
    assert str(info.value).startswith(f"{path}: fusion.descriptions: ")
    assert "RAYONES_ARANAZSO" in str(info.value) and "(nothing was trained)" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_run_study_stops_at_a_misspelt_class_before_any_run(kit, synth_data, monkeypatch):
    from defectfusion.commands import study, study_launch

    def no_training(*args, **kwargs):
        raise AssertionError("a run was launched")

    for module in (study, study_launch):
        monkeypatch.setattr(module, "run_local", no_training, raising=False)
    cfg = _config(kit, synth_data, name="study_typo.yml", fusion={"descriptions": str(kit / "typo.yml")})
    out = kit / "run_study_typo"
    started = time.monotonic()
    with pytest.raises(ConfigError, match="described classes not in the dataset: RAYONES_ARANAZSO"):
        study.run_study(cfg, out, arms=["text", "continued"], seeds=1, progress=False)
    assert time.monotonic() - started < 15
    assert not (out / "runs").exists()
