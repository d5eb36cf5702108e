"""The progressive run end to end on a tiny model: invariants of the phases and the summary."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from defectfusion.config import load_config
from defectfusion.engine.training.progressive import run_training, select_phases
from defectfusion.errors import ConfigError, DataError
from defectfusion.models.groups import parameter_group
from tests.helpers import outcome_entry, write_train_config


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
        for name in (
            "metrics.jsonl",
            "results.csv",
            "result.json",
            "best/model.safetensors",
            "best/config.json",
            "best/metrics.json",
            "last/model.safetensors",
            "last/raw.safetensors",
            "last/trainer_state.pt",
        ):
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


def test_the_final_model_is_the_recorded_best_and_its_weights_are_that_checkpoint(run):
    out, summary = run
    final = summary["final"]
    candidates = [("baseline", summary["baseline"]["map50"])] + [
        (name, summary["phases"][name]["best_map50"]) for name in ("phase1", "phase2", "phase3")
    ]
    best = max(value for _, value in candidates)
    assert final["phase"] == next(name for name, value in candidates if value == best)  # ties keep the earlier
    assert final["map50"] == best and final["reason"]
    source = out / ("baseline" if final["phase"] == "baseline" else final["phase"]) / "best" / "model.safetensors"
    chosen, copied = _weights(source), _weights(out / "final" / "model.safetensors")
    assert chosen.keys() == copied.keys() and not _changed(chosen, copied)


@pytest.mark.parametrize(
    ("phases", "chosen", "words"),
    [
        ({"phase1": 0.61, "phase2": 0.64, "phase3": 0.62}, "phase2", "phase2 has the best validation mAP@0.5 (0.6400)"),
        ({"phase1": 0.60, "phase2": 0.60}, "baseline", "no phase beat the baseline"),
        ({"phase1": None, "phase2": 0.59}, "baseline", "no phase beat the baseline"),
        ({"phase1": 0.6001}, "phase1", "vs the baseline (0.6000)"),
    ],
)
def test_the_final_choice_follows_the_recorded_metrics(tmp_path, synth_data, phases, chosen, words):
    from defectfusion.engine.training.progressive import TrainingRun

    run_ = TrainingRun(load_config(write_train_config(tmp_path / "cfg.yml", synth_data)), tmp_path / "run")
    run_.summary = {
        "baseline": {"map50": 0.60, "map": 0.3, "checkpoint": str(tmp_path / "none")},
        "gates": [],
        "phases": {name: outcome_entry(name, v, tmp_path / name) for name, v in phases.items()},
    }
    run_._choose_final()
    assert run_.summary["final"]["phase"] == chosen and words in run_.summary["final"]["reason"]


def test_a_gate_stops_the_run_and_the_summary_says_why(tmp_path, synth_data):
    cfg = write_train_config(
        tmp_path / "cfg.yml", synth_data, order=["baseline", "phase1", "phase2"], gates={"phase1": {"min": 0.99}}
    )
    summary = run_training(load_config(cfg), tmp_path / "run", progress=False)
    assert list(summary["phases"]) == ["baseline", "phase1"]
    assert summary["gates"][0]["proceed"] is False and "below the gate" in summary["gates"][0]["reason"]
    assert not (tmp_path / "run" / "phase2").exists()


def test_phase_selection_and_existing_run_folder(tmp_path, synth_data):
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data))
    assert select_phases(cfg, "2") == ["phase2"] and select_phases(cfg, "baseline") == ["baseline"]
    with pytest.raises(ConfigError, match="no phase '7'"):
        select_phases(cfg, "7")
    (tmp_path / "run" / "start").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("name: x\n")
    (tmp_path / "run" / "start" / "metrics.json").write_text("{}")  # it evaluated its start: it started
    with pytest.raises(ConfigError, match="already holds a run: pass --resume"):
        run_training(cfg, tmp_path / "run", phase="baseline", progress=False)
    with pytest.raises(ConfigError, match="starts from a trained model"):
        run_training(cfg, tmp_path / "run2", phase="2", progress=False)


def test_a_run_resumed_between_phase1_and_phase2_trains_phase2_as_the_uninterrupted_run(tmp_path, synth_data):
    import shutil

    import torch

    from defectfusion.config import ModelConfig
    from defectfusion.data.coco import load_coco
    from defectfusion.models.checkpoint import save_detector
    from defectfusion.models.detector import build_detector

    torch.manual_seed(0)
    names = list(load_coco(synth_data / "train" / "annotations.json").class_names)
    save_detector(build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), names), tmp_path / "start")
    cfg = load_config(
        write_train_config(
            tmp_path / "cfg.yml", synth_data, order=["phase1", "phase2"], model={"checkpoint": str(tmp_path / "start")}
        )
    )
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
    cfg_path = write_train_config(
        tmp_path / "cfg.yml",
        synth_data,
        order=["full"],
        phases={"full": {**full, "epochs": 1}},
        model={"backbone_weights": str(tmp_path / "hgnet")},
    )
    summary = run_training(load_config(cfg_path), tmp_path / "run", progress=False)
    assert summary["start_model"] == f"random initialisation, backbone from {tmp_path / 'hgnet'}"
    assert summary["start"] is None and summary["baseline"] is None  # a random start is no baseline
    assert summary["phases"]["full"]["epochs_run"] == 1 and summary["final"]["phase"] == "full"

    with pytest.raises(ConfigError, match="either checkpoint .* or backbone_weights"):
        load_config(cfg_path, ["model.checkpoint=somewhere"])


def test_a_gate_that_cannot_fail_is_refused(tmp_path, synth_data):
    path = write_train_config(
        tmp_path / "cfg.yml", synth_data, gates={"phase1": {"min": 0.0, "relative_to_baseline": True}}
    )
    with pytest.raises(ConfigError, match="cannot fail: a phase's best includes its starting point"):
        load_config(path)
    # The same bound on the phase's last evaluation can fail, and is accepted.
    assert load_config(path, ["gates.phase1.value=last"]).gates["phase1"].value == "last"


def test_gate_decisions_say_what_they_compared(tmp_path, synth_data):
    cfg = write_train_config(
        tmp_path / "cfg.yml",
        synth_data,
        order=["baseline", "phase1", "phase2"],
        gates={"phase1": {"value": "last", "min": 0.5, "relative_to_baseline": True}},
    )
    summary = run_training(load_config(cfg), tmp_path / "run", progress=False)
    gate = summary["gates"][0]
    phase1 = summary["phases"]["phase1"]
    baseline = summary["baseline"]["map50"]
    assert gate["compared_value"] == "last" and gate["epoch"] == phase1["last_epoch"] == 1
    assert gate["value"] == phase1["last_map50"] and gate["min"] == pytest.approx(baseline + 0.5)
    assert gate["compared"].startswith(f"phase1's last validation map50 (epoch 1) = {phase1['last_map50']:.4f}")
    assert f"(baseline {baseline:.4f} +0.5000)" in gate["compared"]
    assert gate["proceed"] is False and "phase2" not in summary["phases"]


def test_a_final_model_that_is_the_baseline_shares_its_test_files_and_both_entries_name_them(tmp_path, synth_data):
    """Phase 1 barely moves (lr 1e-12, gates at 0), so it ties the baseline, which is kept: the baseline is scored
    on the test images once, and both test entries name the files written for it. Failed when the baseline's
    entry named a 'baseline_metrics.json' that was never written."""
    import torch

    from defectfusion.config import ModelConfig
    from defectfusion.data.coco import load_coco
    from defectfusion.data.synthetic import generate_synthetic_dataset
    from defectfusion.models.checkpoint import save_detector
    from defectfusion.models.detector import build_detector
    from defectfusion.report.values import load_metrics

    torch.manual_seed(0)
    names = list(load_coco(synth_data / "train" / "annotations.json").class_names)
    save_detector(build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), names), tmp_path / "start")
    other = generate_synthetic_dataset(tmp_path / "other", train=1, val=6, size=96, seed=11).root
    test_ann = str(other / "val" / "annotations.json")
    cfg_path = write_train_config(
        tmp_path / "cfg.yml",
        synth_data,
        order=["phase1"],
        phases={"phase1": {"lr": 1e-12}},
        model={"checkpoint": str(tmp_path / "start")},
        data={"test": {"annotations": test_ann}},
    )
    summary = run_training(load_config(cfg_path), tmp_path / "run", progress=False)
    assert summary["final"]["phase"] == "baseline"
    test = summary["test"]
    assert test["baseline"]["metrics"] == test["final"]["metrics"]
    for role in ("final", "baseline"):
        assert load_metrics(Path(test[role]["metrics"])).map50 == test[role]["map50"], role


def test_a_test_split_scores_the_final_choice_and_selects_nothing(tmp_path, synth_data):
    import torch

    from defectfusion.config import ModelConfig
    from defectfusion.data.coco import load_coco
    from defectfusion.data.synthetic import generate_synthetic_dataset
    from defectfusion.engine.evaluation.results_file import read_results_file
    from defectfusion.models.checkpoint import save_detector
    from defectfusion.models.detector import build_detector

    other = generate_synthetic_dataset(tmp_path / "other", train=1, val=6, size=96, seed=11).root
    torch.manual_seed(0)
    names = list(load_coco(synth_data / "train" / "annotations.json").class_names)
    save_detector(build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), names), tmp_path / "start")
    test_ann = other / "val" / "annotations.json"
    cfg_path = write_train_config(tmp_path / "cfg.yml", synth_data, order=["phase1"],
                                  model={"checkpoint": str(tmp_path / "start")},
                                  data={"test": {"annotations": str(test_ann)}})  # fmt: skip
    summary = run_training(load_config(cfg_path), tmp_path / "run", progress=False)
    test = summary["test"]
    val_ann = str((synth_data / "val" / "annotations.json").resolve())
    assert test["selected_on"] == val_ann and test["annotations"] == str(test_ann.resolve()) and test["num_images"] == 6
    # selection used validation only: the final choice and every logged evaluation are validation numbers
    best = max(summary["baseline"]["map50"], summary["phases"]["phase1"]["best_map50"])
    assert summary["final"]["map50"] == best
    logged = [json.loads(line) for line in (tmp_path / "run" / "phase1" / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["map50"] == summary["baseline"]["map50"]  # epoch 0 = the checkpoint, on validation
    # the test numbers are the final model's detections on the test images, stored for later statistics
    test_images = load_coco(test_ann)
    stored = read_results_file(test["final"]["results"], [r.id for r in test_images.images],
                               list(test_images.label_to_category_id))  # fmt: skip
    assert set(stored) <= {r.id for r in test_images.images} and stored
    assert {"final", "baseline"} <= set(test)
    # what a study reads of the run, through its one reader
    from defectfusion.engine.training.run_record import read_run_record
    from defectfusion.report.values import load_metrics

    record = read_run_record(tmp_path / "run")
    assert record.test_results == Path(test["final"]["results"]) and record.test_metrics.name == "final_metrics.json"
    assert load_metrics(record.test_metrics).map50 == test["final"]["map50"] and record.finished
    for role in ("final", "baseline"):  # each entry names a metrics file that was written, with its scores
        assert load_metrics(Path(test[role]["metrics"])).map50 == test[role]["map50"], role
    # the run's report compares on the test images and says so in its tables
    from defectfusion.commands.report_run import report_run

    rep = report_run(tmp_path / "run", grid=0, progress=False)
    assert rep.result.labels[1] == "final [test: 6 images that selected nothing]"
    assert rep.result.metrics.num_images == 6

    # a "test" set holding training images is refused
    train_ann = str(synth_data / "train" / "annotations.json")
    leaky = write_train_config(tmp_path / "leak.yml", synth_data, order=["phase1"],
                               model={"checkpoint": str(tmp_path / "start")},
                               data={"test": {"annotations": train_ann}})  # fmt: skip
    with pytest.raises(DataError, match="test image file.* are also training or validation images"):
        run_training(load_config(leaky), tmp_path / "run2", progress=False)


def test_the_summary_says_whether_the_final_model_used_the_text(tmp_path, synth_data):
    import torch

    from defectfusion.config import FusionConfig, ModelConfig
    from defectfusion.data.coco import load_coco
    from defectfusion.data.synthetic import generate_synthetic_dataset
    from defectfusion.models.checkpoint import save_detector
    from defectfusion.models.detector import build_detector
    from defectfusion.models.fusion import random_text_embeddings

    other = generate_synthetic_dataset(tmp_path / "other", train=1, val=4, size=96, seed=12).root
    torch.manual_seed(0)
    names = list(load_coco(synth_data / "train" / "annotations.json").class_names)
    # a fused start (gates open): whichever model is final, it is fused
    start = build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), names,
                           FusionConfig(gate_init=0.5), random_text_embeddings(len(names), 16, 0))  # fmt: skip
    save_detector(start, tmp_path / "start")
    cfg_path = write_train_config(tmp_path / "cfg.yml", synth_data, order=["phase1"],
                                  model={"checkpoint": str(tmp_path / "start")},
                                  data={"test": {"annotations": str(other / "val" / "annotations.json")}},
                                  train={"test_baseline": False})  # fmt: skip
    summary = run_training(load_config(cfg_path), tmp_path / "run", progress=False)
    test = summary["test"]
    assert "baseline" not in test and not (tmp_path / "run" / "test" / "baseline_metrics.json").exists()
    usage = test["final"]["text_usage"]
    heads = len(start.model.decoder.class_embed)
    assert len(usage["gates"]) == heads and usage["layer_gate"] == usage["gates"][usage["layer"]]
    assert usage["num_images"] == 4 and usage["num_selected"] > 0
    assert usage["text_share"] > 0 and 0 <= usage["flip_share"] <= 1
    assert {"mean_abs_base", "mean_abs_text", "text_share_centered", "num_flipped", "score_threshold"} <= set(usage)


def test_records_carry_each_phase_configured_lr_not_its_decayed_value(run):
    out, _ = run
    from defectfusion.io import read_jsonl

    for phase, configured in (("phase1", 1e-2), ("phase2", 1e-3)):
        records = [r for r in read_jsonl(out / phase / "metrics.jsonl") if r["epoch"]]
        assert records and all(r["base_lr"] == pytest.approx(configured) for r in records)
        assert records[-1]["lr"] < configured  # what the legend used to print


def test_a_run_that_never_started_gives_its_folder_to_the_corrected_command(tmp_path, synth_data, capsys):
    """A folder holding only the config of a run that failed before anything trained (a bad input found at run
    time, a kill) does not block the corrected command: it is replaced, and said so. Fails if any config.yaml
    were taken for a run to resume."""
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data, order=["baseline"]))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: the failed one\n")
    summary = run_training(cfg, tmp_path / "run", progress=False)
    assert "replacing a run that never started" in capsys.readouterr().out
    assert summary["final"] is not None and "the failed one" not in (tmp_path / "run" / "config.yaml").read_text()
