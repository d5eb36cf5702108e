"""A study's report from its summary: the rule above the numbers, the primary family apart from the exploratory."""

from defectfusion.report.study import write_study_report
from tests.helpers import check_html


def _iv(a, b, d, lo, hi, metric="map50", **extra):
    return {
        "a": a,
        "b": b,
        "metric": metric,
        "difference": d,
        "low": lo,
        "high": hi,
        "level": 0.95,
        "draws": 2000,
        "seed_variance": 1e-4,
        "image_variance": 4e-5,
        "df": 7.5,
        "seeds": [3, 1],
        "images": 40,
        "p_value": 0.2,
        **extra,
    }


def _entry(fraction, text_map):
    def arm(name, m):
        return {
            "arm": name,
            "seeds": 3,
            "map50_mean": m,
            "map50_sd": 0.01,
            "map_mean": m / 2,
            "map_sd": 0.005,
            "per_class_ap50": {"crack": m, "scratch": m},
            "pair_counts": [3.0, 2.0],
        }

    run = {
        "key": "text/100pct/seed0",
        "arm": "text",
        "seed": 0,
        "folder": "/runs/text/a",
        "final_phase": "phase2",
        "final_reason": "best on val",
        "text_usage": {
            "gates": [0.2, -0.1],
            "layer_gate": -0.1,
            "text_share_centered": 0.137,
            "text_share": 0.3,
            "flip_share": 0.021,
        },
    }
    return {
        "fraction": fraction,
        "arms": {"baseline": arm("baseline", 0.5), "text": arm("text", text_map)},
        "primary": [_iv("text", "baseline", 0.02, 0.005, 0.04), _iv("text", "random", 0.01, -0.01, 0.03)],
        "exploratory": [
            {"family": "per-class AP@0.5", **_iv("text", "baseline", 0.03, -0.02, 0.08, "ap50:crack"), "p_holm": 0.6},
            {
                "family": "confusable pair (counts)",
                **_iv("text", "baseline", -2.0, -4.0, 0.0, "confusion:crack->scratch"),
                "p_holm": 0.09,
            },
        ],
        "power": [
            {
                "a": "text",
                "b": "baseline",
                "power": 0.8,
                "detectable": 0.021,
                "seeds": 3,
                "images": 40,
                "seeds_for": {"0.01": 9, "0.035": 2},
                "images_for": {"0.01": None, "0.035": 20},
                "seed_variance_known": True,
            }
        ],
        "verdict": {"outcome": "inconclusive", "sentences": ["text − baseline = +0.020.", "By the rule: inconclusive"]},
        "notes": ["2 seeds per arm: the seed variance rests on 2 degrees of freedom"],
        "runs": {"text": [run]},
        "manipulation": {"per_arm": {"text": {"share": 0.137}}, "text_used": True, "used_share": 0.05},
        "skipped_phases": {},
        "subset": {"images": 12, "boxes": {"crack": 7, "scratch": 9}} if fraction < 1 else None,
    }


def test_the_report_states_the_rule_first_and_keeps_exploratory_numbers_apart(tmp_path):
    summary = {
        "name": "s",
        "rule": "Primary measure: mAP@0.5 ...",
        "draws": 2000,
        "pair": ["crack", "scratch"],
        "scored_on": {"annotations": "test.json", "images": 40, "split": "test", "test": True, "note": None},
        "fractions": {"25pct": _entry(0.25, 0.55), "100pct": _entry(1.0, 0.6)},
    }
    md, html = write_study_report(tmp_path / "report", summary, ["crack", "scratch"])
    text = md.read_text()
    assert text.index("The rule (written before the numbers)") < text.index("Verdict (25pct")
    # the verdict once per fraction, after the numbers it follows from
    for label in ("25pct", "100pct"):
        verdict = text.index(f"Verdict ({label}")
        assert text.index(f"The rule's comparisons ({label}") < text.index(f"Arms ({label}") < verdict
        assert text.index(f"Runs ({label}") < verdict < text.index(f"What this study can see ({label}")
        assert text.count(f"Verdict ({label}") == 1
    assert text.index("Verdict (25pct") < text.index(
        "Exploratory (25pct of the training images): not decided by the rule"
    )
    assert "crack called scratch (count)" in text and "AP@0.5 crack" in text and "0.600 ± 0.010" in text
    assert "13.7%" in text and "2.1%" in text and "p 0.090" in text
    assert "+0.010 [-0.010, +0.030]" in text and "2 seeds per arm" in text and "-2.0 [-4.0, +0.0] p 0.090" in text
    assert "12 training images (crack 7, scratch 9 boxes)" in text and "out of reach" in text
    assert "3 already do" in text and "| 9 |" in text
    plots = {p.name for p in (tmp_path / "report" / "plots").iterdir()}
    assert plots == {"forest_25pct.png", "forest_100pct.png", "learning_curve.png"}
    check_html(html)
