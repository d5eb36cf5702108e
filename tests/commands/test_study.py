"""`defectfusion study` on a tiny config: arms x seeds from one baseline, scored on test, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from defectfusion.commands.study import run_study
from defectfusion.commands.study_launch import SlurmOptions
from defectfusion.config import ModelConfig, load_config
from defectfusion.data.coco import load_coco
from defectfusion.data.synthetic import generate_synthetic_dataset
from defectfusion.engine.study.intervals import Interval
from defectfusion.engine.study.verdict import decide
from defectfusion.errors import DataError
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


def _pycocotools_map50(annotations, results) -> float:
    """mAP@0.5 of a results file by pycocotools, the reference (classes with ground truth only)."""
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        dt = gt.loadRes(str(results)) if json.loads(Path(results).read_text()) else None
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, every class, area all, 100 detections
    per_class = [p[p > -1].mean() for p in precision.T if (p > -1).any()]
    return float(np.mean(per_class))


def test_a_study_trains_every_arm_and_seed_scores_on_test_and_decides(study_config):
    root, cfg = study_config
    out = root / "out"
    arms = ["text", "shuffled", "continued"]
    result = run_study(cfg, out, arms=arms, seeds=2, parallel=2, draws=400, progress=False)
    plan = json.loads((out / "study.json").read_text())
    assert [r["arm"] for r in plan["runs"]] == ["text", "text", "shuffled", "shuffled", "continued", "continued"]
    assert plan["rule"].startswith("Primary measure: mAP@0.5")
    for run in plan["runs"]:
        with open(f"{run['folder']}/summary.json") as f:
            summary = json.load(f)
        assert summary["test"]["annotations"] == str((root / "test_data" / "val" / "annotations.json").resolve())
        # the study scores the baseline once, not every run
        assert not (Path(run["folder"]) / "test" / "baseline_metrics.json").exists()
    shuffled = load_config(plan["runs"][3]["config"])
    assert shuffled.fusion.text == "shuffled" and shuffled.fusion.random_seed == 1
    # the continued arm has no fusion head and skips phase 1, which trains only the fusion
    continued = load_config(plan["runs"][4]["config"])
    assert continued.order == ["phase2"] and not continued.phases["phase2"].fusion
    summary = result.summary
    entry = summary["fractions"]["100pct"]
    assert summary["scored_on"]["test"] and summary["scored_on"]["images"] == 8 and summary["draws"] == 400
    assert [(c["a"], c["b"]) for c in entry["primary"]] == [
        ("text", "baseline"),
        ("text", "shuffled"),
        ("text", "continued"),
    ]
    # the verdict follows from the stored intervals by the stated rule
    stored = [Interval.from_dict(c) for c in entry["primary"]]
    if entry["verdict"]["outcome"] != "nothing to compare":
        assert decide(stored).outcome == entry["verdict"]["outcome"]
    # every arm's mean is pycocotools' mAP@0.5 of its runs' test results
    test_annotations = root / "test_data" / "val" / "annotations.json"
    for arm in arms:
        runs = [r for r in plan["runs"] if r["arm"] == arm]
        reference = [
            _pycocotools_map50(test_annotations, Path(r["folder"]) / "test" / "final_results.json") for r in runs
        ]
        assert entry["arms"][arm]["map50_mean"] == pytest.approx(sum(reference) / len(reference), abs=1e-9)
    # each run says where its final model came from; fused runs how much they used the text
    infos = {r["key"]: r for rs in entry["runs"].values() for r in rs}
    assert all(r["final_phase"] for r in infos.values())
    assert infos["text/100pct/seed0"]["text_usage"]["gates"] and infos["continued/100pct/seed0"]["text_usage"] is None
    assert entry["skipped_phases"] == {"continued": ["phase1"]}
    md = result.report_md.read_text()
    assert md.index("The rule (written before the numbers)") < md.index("Verdict") < md.index("Exploratory")
    assert "What this study can see" in md and "text share of the class logit" in md

    # a killed study: one run lost; re-running trains only that run, with another --parallel, and scores
    # nothing it has scored before (the baseline once per study)
    logs = {p.name: p.stat().st_mtime_ns for p in (out / "logs").iterdir()}
    baseline_scored = (out / "baseline" / "metrics.json").stat().st_mtime_ns
    lost = plan["runs"][5]["folder"]
    import shutil

    shutil.rmtree(lost)
    again = run_study(
        None,
        out,
        parallel=1,
        draws=400,
        resume=True,
        overrides=["train.threads=1"],
        explain_images=2,
        progress=False,
    )
    changed = {p.name for p in (out / "logs").iterdir() if p.stat().st_mtime_ns != logs.get(p.name)}
    assert changed == {"continued_100pct_seed1.log"}
    assert (out / "baseline" / "metrics.json").stat().st_mtime_ns == baseline_scored
    assert again.summary["fractions"]["100pct"]["arms"].keys() == entry["arms"].keys()
    # the maps of the fused arms scored on the test boxes (continued has no fusion head to explain)
    assert list(again.summary["map_quality"]) == ["text", "shuffled"]
    assert again.summary["map_quality"]["text"]["gradcam"]["pairs"] > 0
    report = again.report_md.read_text()
    assert "a detections-only control" in report and "deletion test" in report
    with pytest.raises(Exception, match="already holds a study"):
        run_study(cfg, out, arms=["text"], seeds=1, progress=False)

    # a results file that no longer matches its metrics file is named, not averaged
    metrics_file = Path(plan["runs"][0]["folder"]) / "test" / "final_metrics.json"
    original = metrics_file.read_text()
    tampered = json.loads(original)
    tampered["map50"] = (tampered["map50"] or 0.0) + 0.25
    metrics_file.write_text(json.dumps(tampered))
    try:
        with pytest.raises(DataError, match="describe different detections"):
            run_study(None, out, resume=True, draws=50, progress=False)
    finally:
        metrics_file.write_text(original)


def test_another_test_split_changes_no_selection_decision(study_config, tmp_path):
    """Selection (best epochs, gates, the final model) reads validation only. Score a second run on a test
    split made of the first run's own test detections (so its test mAP is far higher): every decision
    stays the same; only the test score moves."""
    from defectfusion.commands.train import train

    root, cfg = study_config
    true_test = root / "test_data" / "val" / "annotations.json"
    first = train(cfg, tmp_path / "true", overrides=[f"data.test.annotations={true_test}"], progress=False).summary
    test = json.loads(true_test.read_text())
    detections = json.loads((tmp_path / "true" / "test" / "final_results.json").read_text())
    best = {}
    for d in detections:  # each image's most confident detection becomes its only object
        if d["score"] > best.get(d["image_id"], {"score": -1})["score"]:
            best[d["image_id"]] = d
    test["annotations"] = [
        {
            "id": k + 1,
            "image_id": d["image_id"],
            "category_id": d["category_id"],
            "bbox": d["bbox"],
            "iscrowd": 0,
            "area": d["bbox"][2] * d["bbox"][3],
        }
        for k, d in enumerate(best.values())
    ]
    easy = true_test.with_name("its_own_detections.json")
    easy.write_text(json.dumps(test))
    second = train(cfg, tmp_path / "easy", overrides=[f"data.test.annotations={easy}"], progress=False).summary

    def decisions(s):
        phases = {n: (p["best_epoch"], p["best_map50"], p["stop_reason"]) for n, p in s["phases"].items()}
        return phases, [(g["after"], g["proceed"]) for g in s["gates"]], s["final"]["phase"], s["final"]["map50"]

    assert decisions(first) == decisions(second)
    assert second["test"]["final"]["map50"] > first["test"]["final"]["map50"] + 0.1


def test_the_slurm_launcher_runs_through_submitit_and_the_study_nests_its_runs_in_mlflow(study_config):
    pytest.importorskip("submitit")
    mlflow = pytest.importorskip("mlflow")
    root, cfg = study_config
    out = root / "slurm_study"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_study(
        cfg,
        out,
        overrides=[f"train.mlflow={uri}", "train.mlflow_experiment=studies"],
        arms=["text"],
        seeds=1,
        launcher="slurm",
        draws=20,
        slurm=SlurmOptions(cluster="local"),
        progress=False,
    )
    assert (out / "slurm").is_dir() and any((out / "slurm").iterdir())  # submitit's job files
    entry = result.summary["fractions"]["100pct"]
    assert entry["arms"]["text"]["seeds"] == 1
    assert any("One seed per arm" in n for n in entry["notes"])  # and the report says what that costs
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("studies").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("study") and "arm" not in r.data.tags)
    child = next(r for r in runs if r.data.tags.get("arm") == "text")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.tags["100pct/verdict"] == entry["verdict"]["outcome"]
    assert parent.data.metrics["100pct/text-baseline/difference"] == pytest.approx(entry["primary"][0]["difference"])
    assert {"summary.json", "report.html"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


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


def test_fraction_baselines_train_first_and_their_fraction_starts_from_them(study_config):
    from defectfusion.commands.preflight import check_plan
    from defectfusion.commands.study_plan import plan_study

    root, cfg = study_config
    plan = plan_study(
        load_config(cfg), root / "fb_plan", arms=["text"], seeds=1, fractions=[0.5, 1.0], fraction_baselines=True
    )
    assert [r.key for r in plan.runs] == ["baseline/50pct/seed0", "text/50pct/seed0", "text/100pct/seed0"]
    own = plan.runs[0].load()
    assert own.order == ["baseline"] and own.model.checkpoint is None
    assert own.data.train.annotations.endswith("train_50pct.json")
    assert plan.runs[1].load().model.checkpoint == str(Path(plan.runs[0].folder) / "final")
    assert plan.runs[2].load().model.checkpoint == load_config(cfg).model.checkpoint
    check_plan(plan)  # a checkpoint the plan's own baseline run will write is not a missing file

    result = run_study(
        cfg, root / "fb", arms=["text"], seeds=1, fractions=[0.5], fraction_baselines=True, draws=50, progress=False
    )
    entry = result.summary["fractions"]["50pct"]
    assert entry["baseline"].endswith("runs/baseline/50pct/seed0")
    assert entry["subset"]["own_baseline"] and entry["subset"]["images"] > 0
    base = json.loads((Path(entry["baseline"]) / "test" / "final_metrics.json").read_text())
    assert entry["arms"]["baseline"]["map50_mean"] == base["map50"]  # the fraction is compared with its own baseline
    with open(Path(entry["runs"]["text"][0]["folder"]) / "summary.json") as f:
        assert json.load(f)["start"]["source"] == str(Path(entry["baseline"]) / "final")
