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
        "data/train/annotations.json", "data/val/annotations.json", "data/test/annotations.json",
        "data/descriptions.yml", "baseline/summary.json", "baseline/baseline/best/model.safetensors",
        "study/study.json", "study/summary.json", "study/baseline/metrics.json",
        "study/runs/text/100pct/seed0/phase1/metrics.jsonl", "study/runs/random/100pct/seed1/final/config.json",
        "study/runs/continued/100pct/seed0/test/final_results.json",
        "summary.json", "report/report.md", "report/report.html",
    ]:  # fmt: skip
        assert (demo / path).is_file(), path
    assert list((demo / "report" / "explain").glob("*/explanation.png"))
    assert (demo / "report" / "explain" / "report.html").is_file()


def test_the_report_scores_every_map_kind_against_the_control_and_by_the_deletion_test(demo):
    summary = json.loads((demo / "summary.json").read_text())
    quality = summary["map_quality"]
    kinds = {"similarity", "text_term", "gradcam", "pixel", "text_gradcam", "sampling", "contrast", "boxes"}
    assert set(quality) == kinds
    for kind in quality.values():
        overall = kind["overall"]
        assert overall["pairs"] > 0 and 0.0 <= overall["pointing_game"] <= 1.0 and 0.0 < overall["chance"] < 1.0
    assert set(summary["map_comparisons"]) == kinds
    faith = summary["map_faithfulness"]
    assert faith["images"] == 3 and {"boxes", "random", "gradcam", "sampling"} <= set(faith["kinds"])
    saved = json.loads((demo / "report" / "explain" / "map_quality.json").read_text())
    assert saved["default_kind"] == "sampling" and saved["source"].endswith("test/annotations.json")
    assert saved["faithfulness_measured"] and saved["default_choice"]["why"]
    report = (demo / "report" / "report.md").read_text()
    assert "which maps show more than where the detections are" in report and "pointing game" in report
    assert "the bar" not in report and "read the image to classify" not in report
    assert list((demo / "report" / "plots").glob("forest_*.png"))


def test_every_arm_starts_from_the_baseline_selects_on_val_and_is_scored_on_test(demo):
    baseline = json.loads((demo / "baseline" / "summary.json").read_text())
    start = baseline["phases"]["baseline"]["best_dir"]
    plan = json.loads((demo / "study" / "study.json").read_text())
    arms = ("text", "shuffled", "random", "continued")
    assert sorted({r["arm"] for r in plan["runs"]}) == sorted(arms)
    assert all(sum(r["arm"] == arm for r in plan["runs"]) == 2 for arm in arms)
    for run in plan["runs"]:
        with open(f"{run['folder']}/summary.json") as f:
            summary = json.load(f)
        assert summary["start"]["source"] == start  # the same baseline for every arm and seed
        # phase 1 (or the first phase left) starts exactly at the baseline's validation numbers
        first = next(iter(summary["phases"].values()))
        assert first["initial_map50"] == summary["baseline"]["map50"]
        assert summary["test"]["annotations"].endswith("data/test/annotations.json")


def test_the_verdict_follows_from_the_test_numbers_and_the_text_usage_of_every_run(demo):
    from defectfusion.engine.study.intervals import Interval
    from defectfusion.engine.study.verdict import decide

    summary = json.loads((demo / "summary.json").read_text())
    study = summary["study"]
    assert study["scored_on"]["test"] and study["scored_on"]["images"] == 16
    entry = study["fractions"]["100pct"]
    assert [c["b"] for c in entry["primary"]] == ["baseline", "shuffled", "random", "continued"]
    text_vs_base = entry["primary"][0]
    assert f"{text_vs_base['difference']:+.3f}" in " ".join(summary["verdict"])
    if entry["verdict"]["outcome"] != "nothing to compare":
        assert decide([Interval.from_dict(c) for c in entry["primary"]]).outcome == entry["verdict"]["outcome"]
    # gates and the text share of every fused run, and the sentence the share implies
    for arm in ("text", "shuffled", "random"):
        for run in entry["runs"][arm]:
            usage = run["text_usage"]
            if run["final_phase"] == "baseline":  # kept its plain baseline: no text to measure
                assert usage is None
            else:
                assert usage["gates"] and usage["text_share_centered"] is not None
    share = entry["manipulation"]["per_arm"]["text"]["share"]
    said = " ".join(entry["verdict"]["sentences"])
    if entry["verdict"]["outcome"] != "nothing to compare":
        assert ("hardly used" in said) == (share < 0.05) and f"{share:.1%}" in said
    report = (demo / "report" / "report.md").read_text()
    assert report.index("The rule (written before the numbers)") < report.index("## Verdict")
    assert report.index("The rule") < report.index("### Arms")  # the rule stands above the numbers
    assert report.index("### Runs") < report.index("## Verdict") and report.count("## Verdict") == 1  # then the verdict
    assert "Demo verdict" not in report and "What the demo does not show" in report


def test_the_html_report_holds_every_image(demo):
    class Images(HTMLParser):
        sources: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

    parser = Images()
    parser.feed((demo / "report" / "report.html").read_text())
    assert len(parser.sources) >= 3
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)


def test_a_bad_worker_count_is_refused_before_anything_is_written(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "run"), "--workers", "0", "--quiet"]) != 0
    assert "workers must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_demo_model_exports_with_float16_weights_at_no_cost(demo, tmp_path):
    from defectfusion.commands.export import export_onnx

    model = json.loads((demo / "summary.json").read_text())["explained_with"]
    result = export_onnx(
        model, tmp_path / "half.onnx", half=True, check_data=demo / "data" / "test" / "annotations.json"
    )
    print(result.half.summary())  # label agreement and the mAP difference, as export prints them
    assert result.half.label_agreement >= 0.98 and abs(result.half.map_drop) <= 0.01
