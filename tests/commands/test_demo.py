"""`defectfusion demo --quick`: the same steps and files as the full demo, in a couple of minutes."""

import json
from html.parser import HTMLParser

import pytest

from defectfusion.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    code = main(["demo", "--quick", "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_every_step_leaves_its_files(demo):
    for path in [
        "data/train/annotations.json",
        "data/val/annotations.json",
        "data/descriptions.yml",
        "baseline/summary.json",
        "baseline/baseline/best/model.safetensors",
        "text/summary.json",
        "text/phase1/metrics.jsonl",
        "text/phase2/best/metrics.json",
        "text/phase3/results.csv",
        "text/final/config.json",
        "control/summary.json",
        "control/phase1/metrics.jsonl",
        "control/final/model.safetensors",
        "summary.json",
        "report/report.md",
        "report/report.html",
        "report/plots/ap50_all_models.png",
        "report/plots/confusion_matrix.png",
        "report/plots/training_curves.png",
    ]:
        assert (demo / path).is_file(), path
    assert list((demo / "report" / "explain").glob("*/similarity_maps.png"))


def test_phase1_starts_at_the_baseline_and_the_final_model_is_the_recorded_best(demo):
    text = json.loads((demo / "text" / "summary.json").read_text())
    baseline = text["baseline"]["map50"]
    assert text["phases"]["phase1"]["initial_map50"] == baseline
    first = json.loads((demo / "text" / "phase1" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 0 and first["map50"] == baseline
    recorded = [("baseline", baseline)] + [(n, p["best_map50"]) for n, p in text["phases"].items()]
    best = max(v for _, v in recorded if v is not None)
    assert text["final"]["phase"] == next(n for n, v in recorded if v == best)
    # The demo's gates compare each phase's last evaluation and say so.
    assert all(g["compared_value"] == "last" and g["compared"] for g in text["gates"])


def test_the_control_is_run_from_the_same_baseline_with_random_text(demo):
    control = json.loads((demo / "control" / "summary.json").read_text())
    text = json.loads((demo / "text" / "summary.json").read_text())
    baseline = json.loads((demo / "baseline" / "summary.json").read_text())
    assert control["start"]["map50"] == text["baseline"]["map50"] == baseline["final"]["map50"]
    assert control["start"]["source"] == text["start"]["source"] == baseline["phases"]["baseline"]["best_dir"]
    assert list(control["phases"]) == ["phase1", "phase2", "phase3"]
    config = (demo / "control" / "config.yaml").read_text()
    assert "text: random" in config


def test_the_verdict_is_computed_from_the_numbers(demo):
    summary = json.loads((demo / "summary.json").read_text())
    verdict = " ".join(summary["verdict"])
    base = summary["validation"]["baseline"]["map50"]
    assert f"{base:.3f}" in verdict
    iv = summary["intervals"]["text_vs_control"]
    assert f"{iv['low']:+.3f}" in verdict or f"{iv['low']:.3f}" in verdict
    report = (demo / "report" / "report.md").read_text()
    assert "## Verdict" in report and "control phase1" in report and summary["verdict"][0] in report


def test_the_html_report_holds_every_image(demo):
    class Images(HTMLParser):
        sources: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

    parser = Images()
    parser.feed((demo / "report" / "report.html").read_text())
    assert len(parser.sources) >= 8
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)


def test_a_failed_control_run_is_one_message_with_its_last_line_and_log(tmp_path):
    import subprocess
    import sys

    from defectfusion.commands.demo import DemoError, _finish_control

    log = tmp_path / "control.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "print('loading'); print('error: disk full'); raise SystemExit(2)"], stdout=sink
        )
    with pytest.raises(
        DemoError, match=r"exit code 2: error: disk full \(whole log: .*control.log\); run the demo again"
    ):
        _finish_control(proc, tmp_path / "control", log)


def test_a_bad_worker_count_is_refused_before_anything_is_written(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "run"), "--workers", "0", "--quiet"]) != 0
    assert "workers must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
