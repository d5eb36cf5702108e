"""`defectfusion data check` end to end: exit 0, the summary on stdout, report.md / report.html / json written."""

from __future__ import annotations

import json

from tests.data.test_dataset_check import build_clean, build_planted
from tests.helpers import check_html, run_cli


def test_cli_reports_planted_problems(tmp_path, capsys):
    files = build_planted(tmp_path / "data")
    out = tmp_path / "report"
    code, stdout, err = run_cli(["data", "check", *files, "--image-size", "640", "--out", out], capsys)
    assert code == 0, err
    assert "recommended input size: 320 px" in stdout
    assert "8 problem(s)" in stdout
    for needle in ("[leak_duplicate]", "copied.png", "[leak_near_duplicate]", "reencoded.jpg", "[empty_class]"):
        assert needle in stdout
    assert "annotation 13" in stdout and "annotation 14" in stdout and "annotation 15" in stdout
    for name in ("report.md", "report.html", "dataset_check.json", "plots/examples.png", "plots/box_sizes.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "dataset_check.json").read_text())
    assert [s["name"] for s in data["splits"]] == ["train", "val", "test"]
    assert len(data["problems"]) == 8 and data["recommended_size"] == 320
    md = (out / "report.md").read_text()
    assert "LEAKAGE train/test" in md and "copied.png" in md
    resources = check_html(out / "report.html")
    assert len(resources.images) == 5  # sizes, aspect ratios, box sizes, classes, examples


def test_cli_clean_set_default_out(tmp_path, capsys):
    files = build_clean(tmp_path)
    code, stdout, err = run_cli(["data", "check", *files], capsys)
    assert code == 0, err
    assert "no problems found" in stdout and "train: 6 images (0 empty), 12 boxes" in stdout
    out = tmp_path / "train" / "data_check"
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert json.loads((out / "dataset_check.json").read_text())["problems"] == []


def test_cli_missing_file_is_one_line_error(tmp_path, capsys):
    from tests.helpers import one_line_error

    line = one_line_error(["data", "check", tmp_path / "nope.json"], capsys)
    assert "nope.json" in line
