"""`defectfusion study` on a tiny config: arms x seeds from one baseline, scored on test, resumable."""

from __future__ import annotations

import json

import pytest
import torch

from defectfusion.commands.study import run_study
from defectfusion.commands.study_launch import SlurmOptions
from defectfusion.config import ModelConfig, load_config
from defectfusion.data.coco import load_coco
from defectfusion.data.synthetic import generate_synthetic_dataset
from defectfusion.models.checkpoint import save_detector
from defectfusion.models.detector import build_detector
from tests.helpers import write_train_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study_config(tmp_path_factory, synth_data):
    root = tmp_path_factory.mktemp("study")
    test = generate_synthetic_dataset(root / "test_data", train=1, val=8, size=96, seed=21).root
    names = list(load_coco(synth_data / "train" / "annotations.json").class_names)
    torch.manual_seed(0)
    save_detector(build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), names), root / "baseline")
    cfg = write_train_config(
        root / "cfg.yml",
        synth_data,
        order=["phase1", "phase2"],
        model={"checkpoint": str(root / "baseline")},
        data={"test": {"annotations": str(test / "val" / "annotations.json")}},
        train={"tensorboard": False, "ema": {"warmups": 5}},
    )
    return root, cfg


def test_a_study_trains_every_arm_and_seed_scores_on_test_and_decides(study_config):
    root, cfg = study_config
    out = root / "out"
    result = run_study(cfg, out, arms=["text", "continued"], seeds=2, parallel=2, draws=40, progress=False)
    plan = json.loads((out / "study.json").read_text())
    assert [r["arm"] for r in plan["runs"]] == ["text", "text", "continued", "continued"]
    assert plan["rule"].startswith("The descriptions helped if text − baseline")
    for run in plan["runs"]:
        with open(f"{run['folder']}/summary.json") as f:
            summary = json.load(f)
        assert summary["test"]["selected_on"].endswith("val/annotations.json")  # selection on validation only
        assert summary["test"]["annotations"] == str((root / "test_data" / "val" / "annotations.json").resolve())
    # the continued arm has no fusion head and skips phase 1, which trains only the fusion
    continued = load_config(plan["runs"][2]["config"])
    assert continued.order == ["phase2"] and not continued.phases["phase2"].fusion
    assert "fusion" not in continued.phases["phase2"].trainable
    summary = result.summary
    entry = summary["fractions"]["100pct"]
    assert summary["scored_on"]["test"] and summary["scored_on"]["images"] == 8
    assert entry["arms"]["text"]["seeds"] == 2 and entry["arms"]["text"]["map50_sd"] is not None
    pairs = {(c["a"], c["b"]) for c in entry["comparisons"]}
    assert pairs == {("text", "baseline"), ("continued", "baseline"), ("text", "continued")}
    text_vs_base = next(c for c in entry["comparisons"] if (c["a"], c["b"]) == ("text", "baseline"))["map50"]
    assert text_vs_base["low"] <= text_vs_base["high"] and text_vs_base["draws"] == 40
    assert entry["verdict"]["outcome"] in {"helped", "hurt", "inconclusive"} and entry["verdict"]["sentences"]
    assert entry["resolution"]["images_to_halve"] == 32
    assert entry["skipped_phases"] == {"continued": ["phase1"]}
    md = result.report_md.read_text()
    assert "The rule (written before the numbers)" in md and "Verdict" in md and "forest" in md

    # a killed study: one run lost; re-running trains only that run
    logs = {p.name: p.stat().st_mtime_ns for p in (out / "logs").iterdir()}
    lost = plan["runs"][3]["folder"]
    import shutil

    shutil.rmtree(lost)
    again = run_study(
        cfg,
        out,
        arms=["text", "continued"],
        seeds=2,
        parallel=2,
        draws=40,
        resume=True,
        explain_images=2,
        progress=False,
    )
    changed = {p.name for p in (out / "logs").iterdir() if p.stat().st_mtime_ns != logs.get(p.name)}
    assert changed == {"continued_100pct_seed1.log"}
    assert again.summary["fractions"]["100pct"]["arms"].keys() == entry["arms"].keys()
    # the maps of the fused arm scored on the test boxes (continued has no fusion head to explain)
    assert list(again.summary["map_quality"]) == ["text"]
    assert again.summary["map_quality"]["text"]["gradcam"]["pairs"] > 0
    assert "do they point at the defects" in again.report_md.read_text()
    with pytest.raises(Exception, match="already holds a study"):
        run_study(cfg, out, arms=["text"], seeds=1, progress=False)


def test_the_slurm_launcher_runs_through_submitit(study_config):
    pytest.importorskip("submitit")
    root, cfg = study_config
    out = root / "slurm_study"
    result = run_study(
        cfg,
        out,
        arms=["random"],
        seeds=1,
        launcher="slurm",
        draws=20,
        slurm=SlurmOptions(cluster="local"),
        progress=False,
    )
    assert (out / "slurm").is_dir() and any((out / "slurm").iterdir())  # submitit's job files
    assert result.summary["fractions"]["100pct"]["arms"]["random"]["seeds"] == 1


def test_training_fractions_are_nested_class_stratified_subsets(tmp_path, synth_data):
    from defectfusion.commands.study_plan import plan_study, stratified_subset

    ann = synth_data / "train" / "annotations.json"
    full = load_coco(ann)
    quarter = load_coco(stratified_subset(ann, 0.25, tmp_path / "q.json"), full.images_dir)
    half = load_coco(stratified_subset(ann, 0.5, tmp_path / "h.json"), full.images_dir)
    q_ids, h_ids = {r.id for r in quarter.images}, {r.id for r in half.images}
    assert q_ids < h_ids < {r.id for r in full.images}  # nested
    assert 0.15 * len(full.images) <= len(q_ids) <= 0.45 * len(full.images)
    present = lambda index: {a.label for anns in index.annotations.values() for a in anns}  # noqa: E731
    assert present(quarter) == present(full)  # every class keeps examples

    cfg = load_config(
        write_train_config(
            tmp_path / "cfg.yml", synth_data, order=["phase1"], model={"checkpoint": str(tmp_path / "any")}
        )
    )
    plan = plan_study(
        cfg,
        tmp_path / "s",
        arms=["text"],
        seeds=1,
        fractions=[0.25, 1.0],
        descriptions=[str(synth_data / "descriptions.yml")],
    )
    assert [r.key for r in plan.runs] == [
        "text/25pct/seed0",
        "text/100pct/seed0",
        "desc:descriptions/25pct/seed0",
        "desc:descriptions/100pct/seed0",
    ]
    small = load_config(plan.runs[0].config)
    assert small.data.train.annotations.endswith("train_25pct.json") and small.data.val == cfg.data.val
    assert load_config(plan.runs[2].config).fusion.descriptions == str((synth_data / "descriptions.yml").resolve())
