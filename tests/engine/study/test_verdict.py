"""The rule that turns the comparisons into a verdict, written before the numbers."""

from __future__ import annotations

import pytest

from defectfusion.engine.study.intervals import Interval
from defectfusion.engine.study.verdict import decide, rule_text


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
