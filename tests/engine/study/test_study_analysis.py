"""One fraction's result: the verdict with its notes, the manipulation check, runs that fell back."""

from __future__ import annotations

import numpy as np
import pytest

from defectfusion.engine.study.study_analysis import RunInfo, analyse_fraction, manipulation_check
from defectfusion.engine.study.study_stats import RunScores
from tests.engine.study.helpers import info, metrics, resampled, runs


def test_the_analysis_says_when_every_run_fell_back_and_when_text_was_hardly_used():
    rng = np.random.default_rng(4)
    arms = {a: runs(a, [0.6, 0.6, 0.6], rng) for a in ("text", "random")}
    baseline = RunScores("baseline", metrics(0.6), resampled(0.6 + rng.normal(0, 0.01, 200)))
    fell = {a: [info(a, k, phase="baseline") for k in range(3)] for a in arms}
    result = analyse_fraction("100pct", 1.0, arms, baseline, fell, ["a", "b"], ("a", "b"), 100)
    assert result.verdict.outcome == "nothing to compare"
    assert "no phase beat it on validation in any run" in result.verdict.sentences[0]

    quiet = {a: [info(a, k, share=0.01) for k in range(3)] for a in arms}
    result = analyse_fraction("100pct", 1.0, arms, baseline, quiet, ["a", "b"], ("a", "b"), 100)
    assert not result.manipulation.text_used
    assert any("hardly used" in s and "1.0%" in s for s in result.verdict.sentences)
    used = {a: [info(a, k, share=0.3) for k in range(3)] for a in arms}
    result = analyse_fraction("100pct", 1.0, arms, baseline, used, ["a", "b"], ("a", "b"), 100)
    assert result.manipulation.text_used and any("was used" in s for s in result.verdict.sentences)
    assert manipulation_check(used).per_arm["text"]["mean_abs_gate"] == pytest.approx(0.15)


def test_few_seeds_say_what_they_cost():
    rng = np.random.default_rng(5)
    baseline = RunScores("baseline", metrics(0.5), resampled(0.5 + rng.normal(0, 0.01, 200)))
    infos = lambda arms: {a: [info(a, k) for k in range(len(r))] for a, r in arms.items()}  # noqa: E731
    one = {a: runs(a, [0.6], rng) for a in ("text", "random")}
    result = analyse_fraction("100pct", 1.0, one, baseline, infos(one), ["a", "b"], None, 100)
    assert any("One seed per arm" in n for n in result.notes)
    assert all(iv.seed_variance is None for iv in result.primary)
    two = {a: runs(a, [0.6, 0.62], rng) for a in ("text", "random")}
    result = analyse_fraction("100pct", 1.0, two, baseline, infos(two), ["a", "b"], None, 100)
    assert any("2 seeds per arm" in n and "2 degrees of freedom" in n for n in result.notes)
    three = {a: runs(a, [0.6, 0.62, 0.61], rng) for a in ("text", "random")}
    assert not analyse_fraction("100pct", 1.0, three, baseline, infos(three), ["a", "b"], None, 100).notes


def test_text_runs_that_kept_their_plain_baseline_count_as_using_no_text():
    infos = {
        "text": [info("text", 0, share=0.3), RunInfo("text/1", "text", 1, "/r", "baseline", "kept", None)],
        "continued": [info("continued", 0)],
    }
    check = manipulation_check(infos)
    assert "continued" not in check.per_arm
    assert check.per_arm["text"]["share"] == pytest.approx(0.15) and check.per_arm["text"]["kept_baseline"] == 1
    everyone = {"text": [RunInfo("text/0", "text", 0, "/r", "baseline", "kept", None)]}
    check = manipulation_check(everyone)
    assert check.per_arm["text"]["share"] == 0.0 and check.text_used is False
