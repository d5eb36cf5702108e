"""The study's comparisons of one fraction: the primary family, the exploratory ones, and arm summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defectfusion.engine.study.study_stats import RunScores, compare_fraction, summarize_arm
from tests.engine.study.helpers import metrics, resampled, runs


def test_a_fraction_names_its_primary_family_and_labels_the_rest_exploratory():
    rng = np.random.default_rng(3)
    arms = {a: runs(a, [0.6, 0.61, 0.59], rng) for a in ("text", "shuffled", "random", "continued")}
    baseline = RunScores("baseline", metrics(0.5), resampled(0.5 + rng.normal(0, 0.01, 200)))
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


def test_summaries_have_an_sd_only_with_tworuns():
    assert summarize_arm("x", [metrics(0.5)], None).map50_sd is None
    assert summarize_arm("x", [metrics(0.5), metrics(0.6)], None).map50_sd == pytest.approx(np.std([0.5, 0.6], ddof=1))
