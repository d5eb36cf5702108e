"""`defectfusion report RUN_DIR`: phases, gates, final vs baseline; user errors."""

from __future__ import annotations

import json

from tests.helpers import check_html, make_run_folder, one_line_error, run_cli


def test_report_of_a_run(kit, tmp_path, capsys):
    run = make_run_folder(tmp_path, kit)
    code, printed, _ = run_cli(["report", run, "--grid", "2"], capsys)
    assert code == 0
    assert "run fabricated: phases" in printed and "gate decisions" in printed and "below the gate" in printed
    assert "final model vs baseline" in printed and "evaluated now (no metrics.json)" in printed
    assert "report.html" in printed
    check_html(run / "report" / "report.html")
    assert json.loads((run / "report" / "metrics.json").read_text())["num_images"] == 8


def test_user_errors_are_one_line(kit, tmp_path, capsys):
    assert "not a training run folder" in one_line_error(["report", tmp_path], capsys)
    assert "does not exist" in one_line_error(["report", tmp_path / "none"], capsys)
    run = make_run_folder(tmp_path, kit)
    (run / "summary.json").write_text("{broken")
    assert "summary.json is not valid JSON" in one_line_error(["report", run], capsys)
    assert "--grid must be >= 0" in one_line_error(["report", run, "--grid", "-1"], capsys)
