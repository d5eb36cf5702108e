"""Hierarchical bootstrap over seeds and images, and the verdict rule."""

import numpy as np
import pytest

from defectfusion.engine.bootstrap import Resampled
from defectfusion.engine.intervals import Interval
from defectfusion.engine.study_stats import Comparison, compare_arms, hierarchical_draws, summarize_arm
from defectfusion.engine.verdict import decide, rule_text


def _resampled(values: np.ndarray) -> Resampled:
    d = len(values)
    return Resampled(
        values,
        values / 2,
        np.stack([values, values], 1),
        np.stack([values, values], 1) / 2,
        np.zeros((d, 3, 3), dtype=np.int64),
    )


def _metrics(map50: float) -> dict:
    return {
        "map50": map50,
        "map": map50 / 2,
        "per_class": {"a": {"ap50": map50}, "b": {"ap50": map50}},
        "confusion_matrix": {"labels": ["a", "b", "background"], "counts": [[0, 1, 0], [2, 0, 0], [0, 0, 0]]},
    }


def test_a_known_difference_between_arms_lies_inside_its_hierarchical_interval():
    rng = np.random.default_rng(0)
    draws = 400
    image_noise = rng.normal(0, 0.03, draws)  # the same image draw moves both arms
    seed_effects_a, seed_effects_b = [0.01, -0.01, 0.015], [-0.005, 0.005, 0.0]
    arm_a = [_resampled(0.60 + e + image_noise + rng.normal(0, 0.005, draws)) for e in seed_effects_a]
    arm_b = [_resampled(0.50 + e + image_noise + rng.normal(0, 0.005, draws)) for e in seed_effects_b]
    observed_a = [_metrics(0.60 + e) for e in seed_effects_a]
    observed_b = [_metrics(0.50 + e) for e in seed_effects_b]
    a, b = summarize_arm("text", observed_a, ("a", "b")), summarize_arm("baseline", observed_b, ("a", "b"))
    assert a.map50_mean == pytest.approx(0.605, abs=1e-12) and a.map50_sd == pytest.approx(
        np.std([0.61, 0.59, 0.615], ddof=1), abs=1e-12
    )
    comparison = compare_arms(
        a, b, hierarchical_draws({"text": arm_a, "baseline": arm_b}, seed=1), ["a", "b"], ("a", "b")
    )
    iv = comparison.map50
    assert iv.low < 0.1 < iv.high and iv.excludes_zero
    assert iv.observed == pytest.approx(0.605 - 0.5, abs=1e-12)
    # the seeds' spread widens the interval beyond what the (shared) image noise alone gives
    single = compare_arms(a, b, hierarchical_draws({"text": arm_a[:1], "baseline": arm_b[:1]}, seed=1), ["a", "b"])
    assert comparison.per_class_ap50["a"].observed == pytest.approx(0.105)
    assert single.map50.half_width < iv.half_width
    assert comparison.pair_confusions[0].observed == 0.0  # both arms confuse a -> b once


def _cmp(a, b, low, high, observed=None):
    obs = (low + high) / 2 if observed is None else observed
    iv = Interval(a, b, obs, low, high, 0.95, 100)
    return Comparison(a, b, iv, iv, {})


@pytest.mark.parametrize(
    ("random", "base", "outcome"),
    [
        ((0.01, 0.05), (0.02, 0.06), "helped"),
        ((-0.01, 0.05), (0.02, 0.06), "inconclusive"),
        ((-0.05, -0.01), (0.02, 0.06), "hurt"),
        ((0.01, 0.05), (-0.09, -0.02), "hurt"),
    ],
)
def test_the_rule_decides_from_both_intervals(random, base, outcome):
    comparisons = {
        ("text", "random"): _cmp("text", "random", *random),
        ("text", "baseline"): _cmp("text", "baseline", *base),
    }
    verdict = decide(comparisons)
    assert verdict.outcome == outcome
    assert any("By the rule" in s for s in verdict.sentences)


def test_without_a_random_arm_the_rule_says_what_it_cannot_separate():
    assert "cannot separate the language" in rule_text(has_random=False)
    assert "text − random and text − baseline" in rule_text(has_random=True)
    assert decide({}).outcome == "no text arm"
