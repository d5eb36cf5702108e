"""Seeds-and-images intervals, the primary family, the rule's verdict, power and the study's own checks."""

import math

import numpy as np
import pytest
from scipy import stats

from defectfusion.engine.evaluation.bootstrap import Resampled
from defectfusion.engine.study.intervals import ArmValues, Interval, compare, holm, pooled_seed_noise
from defectfusion.engine.study.power import power_of
from defectfusion.engine.study.study_analysis import RunInfo, analyse_fraction, manipulation_check
from defectfusion.engine.study.study_stats import RunScores, compare_fraction, summarize_arm
from defectfusion.engine.study.verdict import decide, rule_text
from tests.helpers import fake_metrics


def _arm(name, observed, draws, fixed=False):
    return ArmValues(name, np.asarray(observed, dtype=float), np.asarray(draws, dtype=float), fixed)


def test_the_interval_adds_pooled_seed_variance_and_the_image_covariance_shared_by_seeds():
    rng = np.random.default_rng(0)
    shared_a, shared_b = rng.normal(0, 0.02, 300), rng.normal(0, 0.02, 300)
    a = _arm("text", [0.61, 0.59, 0.62], [0.61 + shared_a + rng.normal(0, 0.01, 300) for _ in range(3)])
    b = _arm("random", [0.60, 0.60, 0.57], [0.59 + shared_b + rng.normal(0, 0.01, 300) for _ in range(3)])
    c = _arm("continued", [0.55, 0.56, 0.57], [0.56 + rng.normal(0, 0.02, 300) for _ in range(3)])
    noise = pooled_seed_noise([a, b, c])
    # pooled by hand: sums of squares over the three arms, 2 df each
    squares = sum(((np.array(x.observed) - np.mean(x.observed)) ** 2).sum() for x in (a, b, c))
    assert noise.variance == pytest.approx(squares / 6) and noise.df == 6
    iv = compare(a, b, noise, images=160)
    seed_part = (
        max(noise.variance, np.var(a.observed, ddof=1)) / 3 + max(noise.variance, np.var(b.observed, ddof=1)) / 3
    )
    assert iv.seed_variance == pytest.approx(seed_part)
    # image part by hand: covariances of different runs' draws, within and across arms
    cov = np.cov(np.vstack([a.draws, b.draws]))
    within_a = np.mean([cov[i, j] for i in range(3) for j in range(3) if i != j])
    within_b = np.mean([cov[i, j] for i in range(3, 6) for j in range(3, 6) if i != j])
    across = np.mean([cov[i, j] for i in range(3) for j in range(3, 6)])
    assert iv.image_variance == pytest.approx(within_a + within_b - 2 * across)
    total = iv.seed_variance + iv.image_variance
    df = total**2 / (iv.seed_variance**2 / 6 + iv.image_variance**2 / 159)
    half = stats.t.ppf(0.975, df) * math.sqrt(total)
    assert iv.observed == pytest.approx(np.mean(a.observed) - np.mean(b.observed))
    assert (iv.low, iv.high) == pytest.approx((iv.observed - half, iv.observed + half))
    assert iv.p_value == pytest.approx(2 * stats.t.sf(abs(iv.observed) / math.sqrt(total), df))


def test_an_arm_noisier_than_the_pool_keeps_its_own_seed_variance():
    flat = np.zeros((3, 50))
    quiet = [_arm(n, [0.5, 0.5001, 0.4999], flat) for n in ("random", "continued", "shuffled")]
    noisy = _arm("text", [0.40, 0.60, 0.50], flat)
    noise = pooled_seed_noise([noisy, *quiet])
    iv = compare(noisy, quiet[0], noise)
    assert iv.seed_variance == pytest.approx(np.var([0.4, 0.6, 0.5], ddof=1) / 3 + noise.variance / 3)


def test_one_seed_leaves_the_seed_variance_unknown_and_says_so():
    rng = np.random.default_rng(1)
    a = _arm("text", [0.6], [0.6 + rng.normal(0, 0.01, 200)])
    base = _arm("baseline", [0.55], [0.55 + rng.normal(0, 0.01, 200)], fixed=True)
    assert pooled_seed_noise([a]) is None
    iv = compare(a, base, None)
    assert iv.seed_variance is None
    assert iv.image_variance == pytest.approx(np.var(a.draws[0] - base.draws[0], ddof=1))


def test_undefined_values_give_an_undefined_interval_and_undefined_draws_are_left_out():
    draws = np.linspace(0.4, 0.6, 20)
    a = _arm("text", [float("nan")], [draws])
    b = _arm("baseline", [0.5], [draws], fixed=True)
    assert not compare(a, b, None).defined
    holes = draws.copy()
    holes[:5] = np.nan
    iv = compare(_arm("text", [0.5], [holes]), b, None)
    assert iv.draws == 15 and iv.defined


def test_holm_adjusts_step_down_and_keeps_undefined():
    assert holm([0.01, 0.04, 0.03, 0.005, float("nan")])[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm([0.01, float("nan")])[1])


def _iv(b, low, high, a="text"):
    return Interval(a, b, (low + high) / 2, low, high, 0.95, 100)


@pytest.mark.parametrize(
    ("bounds", "outcome"),
    [
        ([(0.01, 0.05), (0.02, 0.06), (0.001, 0.03)], "helped"),
        ([(0.01, 0.05), (-0.01, 0.06), (0.001, 0.03)], "inconclusive"),
        ([(-0.05, -0.01), (-0.06, -0.02), (-0.03, -0.001)], "hurt"),
        ([(0.01, 0.05), (-0.06, -0.02), (0.001, 0.03)], "inconclusive"),
    ],
)
def test_the_rule_needs_every_comparison_on_the_same_side(bounds, outcome):
    primary = [_iv(b, lo, hi) for b, (lo, hi) in zip(("baseline", "shuffled", "random"), bounds, strict=True)]
    verdict = decide(primary)
    assert verdict.outcome == outcome
    if outcome == "inconclusive":
        failing = [
            f"text − {b}" for b, (lo, _) in zip(("baseline", "shuffled", "random"), bounds, strict=True) if lo <= 0
        ]
        assert verdict.failing == failing
    if bounds[1][1] < 0 and outcome == "inconclusive":
        assert any("Text ended below shuffled" in s for s in verdict.sentences)


def test_the_rule_names_every_control_and_what_a_missing_one_leaves_open():
    full = rule_text(["text", "shuffled", "random", "continued"])
    assert "the baseline, shuffled, random, continued" in full and "ran no" not in full
    partial = rule_text(["text", "random"])
    assert "ran no shuffled / continued control" in partial
    assert decide([]).outcome == "no text arm"


def test_power_is_the_two_t_quantiles_times_the_standard_error_and_more_seeds_or_images_help():
    iv = Interval(
        "text",
        "random",
        0.01,
        -0.02,
        0.04,
        0.95,
        2000,
        seed_variance=4e-5,
        image_variance=1e-5,
        seeds=(3, 3),
        images=160,
    )
    noise = pooled_seed_noise([_arm(n, [0.5, 0.51, 0.49], np.zeros((3, 4))) for n in ("a", "b", "c", "d")])
    power = power_of(iv, noise, targets=(0.01, 0.035))
    total = 4e-5 + 1e-5
    df = total**2 / ((4e-5) ** 2 / noise.df + (1e-5) ** 2 / 159)
    assert power.detectable == pytest.approx((stats.t.ppf(0.975, df) + stats.t.ppf(0.8, df)) * math.sqrt(total))
    assert power.detectable > 0.01
    assert power.seeds_for[0.035] is not None and power.seeds_for[0.035] <= 3 < power.seeds_for[0.01]
    assert power.images_for[0.035] <= 160
    # with seeds alone the image part stays: a small enough target is out of reach by seeds
    tiny = power_of(iv, noise, targets=(0.001,))
    assert tiny.seeds_for[0.001] is None


def _resampled(values):
    values = np.asarray(values, dtype=float)
    d = len(values)
    return Resampled(
        values,
        values / 2,
        np.stack([values, values], 1),
        np.stack([values, values], 1) / 2,
        np.zeros((d, 3, 3), dtype=np.int64),
    )


def _metrics(map50):
    return fake_metrics([map50, map50], [[0, 1, 0], [2, 0, 0], [0, 0, 0]], names=["a", "b"], map_ratio=0.5)


def _runs(arm, values, rng):
    return [
        RunScores(f"{arm}/{k}", _metrics(v), _resampled(v + rng.normal(0, 0.01, 200))) for k, v in enumerate(values)
    ]


def _info(arm, k, phase="phase2", share=0.2):
    usage = (
        None
        if arm == "continued"
        else {
            "text_share_centered": share,
            "text_share": 2 * share,
            "flip_share": 0.01,
            "gates": [0.1, -0.2],
            "layer_gate": -0.15,
        }
    )
    return RunInfo(f"{arm}/{k}", arm, k, f"/runs/{arm}/{k}", phase, "best on val", usage)


def test_a_fraction_names_its_primary_family_and_labels_the_rest_exploratory():
    rng = np.random.default_rng(3)
    arms = {a: _runs(a, [0.6, 0.61, 0.59], rng) for a in ("text", "shuffled", "random", "continued")}
    baseline = RunScores("baseline", _metrics(0.5), _resampled(0.5 + rng.normal(0, 0.01, 200)))
    result = compare_fraction(arms, baseline, ["a", "b"], ("a", "b"), images=100)
    assert [(iv.a, iv.b) for iv in result.primary] == [
        ("text", "baseline"),
        ("text", "shuffled"),
        ("text", "random"),
        ("text", "continued"),
    ]
    families = {e.family for e in result.exploratory}
    assert families == {"mAP@0.5, other pairs", "mAP@0.5:0.95", "per-class AP@0.5", "confusable pair (counts)"}
    other = [(e.interval.a, e.interval.b) for e in result.exploratory if e.family == "mAP@0.5, other pairs"]
    assert ("random", "continued") in other and ("text", "random") not in other
    for family in families:
        ps = [e for e in result.exploratory if e.family == family]
        assert all(e.p_holm >= e.interval.p_value or math.isnan(e.p_holm) for e in ps)


def test_the_analysis_says_when_every_run_fell_back_and_when_text_was_hardly_used():
    rng = np.random.default_rng(4)
    arms = {a: _runs(a, [0.6, 0.6, 0.6], rng) for a in ("text", "random")}
    baseline = RunScores("baseline", _metrics(0.6), _resampled(0.6 + rng.normal(0, 0.01, 200)))
    fell = {a: [_info(a, k, phase="baseline") for k in range(3)] for a in arms}
    result = analyse_fraction("100pct", 1.0, arms, baseline, fell, ["a", "b"], ("a", "b"), 100)
    assert result.verdict.outcome == "nothing to compare"
    assert "no phase beat it on validation in any run" in result.verdict.sentences[0]

    quiet = {a: [_info(a, k, share=0.01) for k in range(3)] for a in arms}
    result = analyse_fraction("100pct", 1.0, arms, baseline, quiet, ["a", "b"], ("a", "b"), 100)
    assert not result.manipulation.text_used
    assert any("hardly used" in s and "1.0%" in s for s in result.verdict.sentences)
    used = {a: [_info(a, k, share=0.3) for k in range(3)] for a in arms}
    result = analyse_fraction("100pct", 1.0, arms, baseline, used, ["a", "b"], ("a", "b"), 100)
    assert result.manipulation.text_used and any("was used" in s for s in result.verdict.sentences)
    assert manipulation_check(used).per_arm["text"]["mean_abs_gate"] == pytest.approx(0.15)


def test_few_seeds_say_what_they_cost():
    rng = np.random.default_rng(5)
    baseline = RunScores("baseline", _metrics(0.5), _resampled(0.5 + rng.normal(0, 0.01, 200)))
    infos = lambda arms: {a: [_info(a, k) for k in range(len(r))] for a, r in arms.items()}  # noqa: E731
    one = {a: _runs(a, [0.6], rng) for a in ("text", "random")}
    result = analyse_fraction("100pct", 1.0, one, baseline, infos(one), ["a", "b"], None, 100)
    assert any("One seed per arm" in n for n in result.notes)
    assert all(iv.seed_variance is None for iv in result.primary)
    two = {a: _runs(a, [0.6, 0.62], rng) for a in ("text", "random")}
    result = analyse_fraction("100pct", 1.0, two, baseline, infos(two), ["a", "b"], None, 100)
    assert any("2 seeds per arm" in n and "2 degrees of freedom" in n for n in result.notes)
    three = {a: _runs(a, [0.6, 0.62, 0.61], rng) for a in ("text", "random")}
    assert not analyse_fraction("100pct", 1.0, three, baseline, infos(three), ["a", "b"], None, 100).notes


def test_summaries_have_an_sd_only_with_two_runs():
    assert summarize_arm("x", [_metrics(0.5)], None).map50_sd is None
    assert summarize_arm("x", [_metrics(0.5), _metrics(0.6)], None).map50_sd == pytest.approx(
        np.std([0.5, 0.6], ddof=1)
    )


def test_text_runs_that_kept_their_plain_baseline_count_as_using_no_text():
    infos = {
        "text": [_info("text", 0, share=0.3), RunInfo("text/1", "text", 1, "/r", "baseline", "kept", None)],
        "continued": [_info("continued", 0)],
    }
    check = manipulation_check(infos)
    assert "continued" not in check.per_arm
    assert check.per_arm["text"]["share"] == pytest.approx(0.15) and check.per_arm["text"]["kept_baseline"] == 1
    everyone = {"text": [RunInfo("text/0", "text", 0, "/r", "baseline", "kept", None)]}
    check = manipulation_check(everyone)
    assert check.per_arm["text"]["share"] == 0.0 and check.text_used is False
