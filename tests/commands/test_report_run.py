"""report_run: a training run's phases, gates, curves and final metrics, evaluating what has no metrics.json."""

from __future__ import annotations

import json
import shutil

import pytest

from defectfusion.commands.report_run import report_run
from defectfusion.errors import DataError
from defectfusion.models.checkpoint import load_detector, save_detector
from tests.helpers import check_html, make_run_folder


def test_run_report_evaluates_missing_metrics_once_and_shows_phases_gates_and_curves(kit, tmp_path):
    run = make_run_folder(tmp_path, kit)
    rep = report_run(run, grid=2)
    assert rep.evaluated == [str(run / "final"), str(run / "baseline" / "best")]
    out = run / "report"
    final = json.loads((out / "metrics.json").read_text())
    baseline = json.loads((out / "baseline_metrics.json").read_text())
    assert final["num_images"] == baseline["num_images"] == 8
    assert [r["phase"] for r in rep.phase_rows] == ["baseline", "phase1"]
    assert rep.phase_rows[1]["Δ mAP@0.5"] == "+0.040" and rep.phase_rows[0]["Δ mAP@0.5"] == "–"
    assert rep.gate_rows[0]["next phase"] == "skipped" and "below the gate" in rep.gate_rows[0]["reason"]
    md = (out / "report.md").read_text()
    for heading in (
        "Training phases",
        "Gate decisions",
        "Evaluated now",
        "Training curves",
        "Comparison with the baseline",
        "Predictions on the validation images",
    ):
        assert heading in md
    assert md.index("Training phases") < md.index("Per-class metrics")  # the run comes first
    parsed = check_html(out / "report.html")
    assert len(parsed.images) == len(list((out / "plots").glob("*.png"))) >= 7

    again = report_run(run, grid=0)  # metrics now exist: nothing is evaluated again
    assert again.evaluated == [] and again.result.metrics.to_dict() == final

    # the final model replaced (a resumed run): its old metrics are stale and evaluated anew
    save_detector(load_detector(kit.baseline), run / "final")
    third = report_run(run, grid=0)
    assert third.evaluated == [str(run / "final")]


def test_run_report_errors(kit, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        report_run(tmp_path / "nowhere")
    with pytest.raises(DataError, match="not a training run folder: summary.json is missing"):
        report_run(tmp_path)
    run = make_run_folder(tmp_path, kit)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "final": None}))
    with pytest.raises(DataError, match="has no final model yet.*--resume"):
        report_run(run)
    (run / "summary.json").write_text(json.dumps(summary))
    config = (run / "config.yaml").read_text().replace(str(kit.val_ann), str(tmp_path / "gone.json"))
    (run / "config.yaml").write_text(config)
    with pytest.raises(DataError, match=r"the run's validation set \(data.val in .*config.yaml\).*gone.json"):
        report_run(run)


def test_a_moved_run_folder_still_reports(kit, tmp_path):
    run = make_run_folder(tmp_path / "a", kit)
    moved = tmp_path / "b" / "run"
    shutil.copytree(run, moved)
    shutil.rmtree(run)  # summary.json still names the old absolute paths
    rep = report_run(moved, grid=0)
    assert rep.evaluated == [str(moved / "final"), str(moved / "baseline" / "best")]
    assert rep.result.baseline is not None and (moved / "report" / "report.html").is_file()
    # a baseline outside the run that is gone: the report says so instead of comparing
    summary = json.loads((moved / "summary.json").read_text())
    summary["baseline"]["checkpoint"] = str(tmp_path / "elsewhere" / "phase1_model")
    (moved / "summary.json").write_text(json.dumps(summary))
    (moved / "report" / "baseline_metrics.json").unlink()
    rep = report_run(moved, grid=0)
    assert rep.result.baseline is None and "cannot be found here" in (moved / "report" / "report.md").read_text()


def test_the_gate_table_shows_the_interval_its_reason_names_even_below_zero(kit, tmp_path):
    run = make_run_folder(tmp_path, kit)
    summary = json.loads((run / "summary.json").read_text())
    summary["gates"][0].update(
        min=-0.9516, max=None, value=0.05, proceed=True, reason="map50 0.0500 in [-0.9516, inf): continue"
    )
    (run / "summary.json").write_text(json.dumps(summary))
    rep = report_run(run, grid=0)
    assert rep.gate_rows[0]["range to continue"] == "[-0.9516, ∞)"  # it printed [-∞, ∞)


def test_the_confusable_pair_comes_from_the_run_config_before_the_descriptions(kit, tmp_path):
    import yaml

    from defectfusion.errors import ConfigError

    run = make_run_folder(tmp_path, kit)
    assert report_run(run, grid=0).result.pair == ("ROTURA_FRACTURA", "RAYONES_ARANAZOS")  # the descriptions'
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["confusable_pair"] = ["DEFORMACIONES", "NORMAL"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rep = report_run(run, grid=0)
    assert rep.result.pair == ("DEFORMACIONES", "NORMAL")
    assert "DEFORMACIONES" in (run / "report" / "report.md").read_text().split("onfus", 1)[1]
    assert report_run(run, grid=0, pair=["ROTURA_FRACTURA", "NORMAL"]).result.pair == ("ROTURA_FRACTURA", "NORMAL")
    config["data"]["confusable_pair"] = ["DEFORMACIONES", "DENT"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"data.confusable_pair of the run's config: unknown class 'DENT'"):
        report_run(run, grid=0)
