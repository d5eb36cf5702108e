"""A study's report from its summary: the rule above the numbers, forest plots, a learning curve."""

from defectfusion.report.study import write_study_report
from tests.helpers import check_html


def _iv(a, b, d, lo, hi, metric="map50"):
    return {"a": a, "b": b, "metric": metric, "difference": d, "low": lo, "high": hi, "level": 0.95, "draws": 50}


def _entry(fraction, text_map):
    def arm(name, m):
        return {
            "arm": name,
            "seeds": 2,
            "map50_mean": m,
            "map50_sd": 0.01,
            "map_mean": m / 2,
            "map_sd": 0.005,
            "per_class_ap50": {"crack": m, "scratch": m},
            "pair_counts": [3.0, 2.0],
        }

    comparison = {
        "a": "text",
        "b": "baseline",
        "map50": _iv("text", "baseline", 0.02, 0.005, 0.04),
        "map": _iv("text", "baseline", 0.01, -0.01, 0.03, "map"),
        "per_class_ap50": {c: _iv("text", "baseline", 0.02, 0.0, 0.05, f"ap50 {c}") for c in ("crack", "scratch")},
        "pair_confusions": [_iv("text", "baseline", -2.0, -4.0, 0.0, "crack as scratch")],
    }
    return {
        "fraction": fraction,
        "arms": {"baseline": arm("baseline", 0.5), "text": arm("text", text_map)},
        "comparisons": [comparison],
        "resolution": {"half_width": 0.02, "test_images": 40, "images_to_halve": 160},
        "verdict": {"outcome": "inconclusive", "sentences": ["text − baseline = +0.020."]},
        "runs": {"text": ["/runs/text/a", "/runs/text/b"]},
        "skipped_phases": {},
    }


def test_the_report_states_the_rule_first_and_draws_forests_and_a_learning_curve(tmp_path):
    summary = {
        "name": "s",
        "rule": "The descriptions helped if ...",
        "draws": 50,
        "pair": ["crack", "scratch"],
        "scored_on": {"annotations": "test.json", "images": 40, "test": True, "note": None},
        "fractions": {"25pct": _entry(0.25, 0.55), "100pct": _entry(1.0, 0.6)},
    }
    md, html = write_study_report(tmp_path / "report", summary, ["crack", "scratch"])
    text = md.read_text()
    assert text.index("The rule (written before the numbers)") < text.index("Verdict (25pct")
    assert "Learning curve" in text and "crack as scratch (count)" in text and "0.600 ± 0.010" in text
    plots = {p.name for p in (tmp_path / "report" / "plots").iterdir()}
    assert plots == {"forest_25pct.png", "forest_100pct.png", "learning_curve.png"}
    check_html(html)
