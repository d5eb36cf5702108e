"""A study's verdict from a rule written before the numbers: helped, hurt, or inconclusive.

The rule reads one family only (test mAP@0.5 of ``text`` against the baseline and against every
control the study ran) and asks every one of its intervals to lie on the same side of 0. Each
verdict then errs at most as often as one interval does on one side (2.5 % at 95 %), whichever
comparison is the one where the truth is 0 (an intersection-union test); ``tests/engine/
test_calibration.py`` checks this by simulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .intervals import Interval
from .study_stats import BASELINE, CONTROLS, TEXT

WHAT_CONTROLS_REMOVE = {
    "shuffled": "the same descriptions on the wrong classes: the geometry of real text without its meaning",
    "random": "random unit vectors in place of the text: the head and its parameters without language",
    "continued": "the same phases without a fusion head: more training alone",
}


def rule_text(arms: Sequence[str], level: float = 0.95) -> str:
    """The decision rule for a study of ``arms``, stated before any number is seen."""
    controls = [c for c in CONTROLS if c in arms]
    against = ", ".join(["the baseline", *controls])
    missing = [c for c in CONTROLS if c not in arms]
    caveat = (
        f" This study ran no {' / '.join(missing)} control, so it cannot rule out what "
        f"{'that control removes' if len(missing) == 1 else 'those controls remove'}."
        if missing
        else ""
    )
    pct = f"{level:.0%}"
    side = f"{(1 - level) / 2:.1%}"
    return (
        f"Primary measure: mAP@0.5 on the scoring images, text arm minus each of {against}. The descriptions "
        f"helped if every one of these differences has a {pct} interval above 0; they hurt if every one lies "
        f"below 0; otherwise the result is inconclusive at this study's size. Intervals cover both the training "
        f"seeds (pooled over the trained arms) and the test images (paired bootstrap), see docs/method.md; "
        f"since every interval must agree, each verdict is a false alarm at most {side} of the time (checked by "
        f"simulation). Everything else in the report is exploratory.{caveat}"
    )


@dataclass
class Verdict:
    outcome: str  # "helped" | "hurt" | "inconclusive" | "no text arm" | "undefined"
    sentences: list[str]
    failing: list[str] = field(default_factory=list)  # the primary comparisons that kept it from a verdict

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "sentences": self.sentences, "failing": self.failing}


def _fmt(value: float) -> str:
    return f"{value:+.3f}"


def describe(iv: Interval) -> str:
    level = f"{iv.level:.0%}"
    return f"{iv.a} − {iv.b} = {_fmt(iv.observed)} ({level} interval {_fmt(iv.low)} to {_fmt(iv.high)})"


def decide(primary: Sequence[Interval], label: str = "") -> Verdict:
    """Apply :func:`rule_text` to the primary family (text − baseline, text − each control)."""
    where = f" ({label})" if label else ""
    if not primary or primary[0].a != TEXT:
        return Verdict("no text arm", [f"No text arm was run{where}: there is nothing to decide."])
    sentences = [f"{describe(iv)}." for iv in primary]
    undefined = [f"{iv.a} − {iv.b}" for iv in primary if not iv.defined]
    if undefined:
        return Verdict(
            "undefined",
            [*sentences, f"By the rule{where}: no verdict; {', '.join(undefined)} is undefined (no boxes scored)."],
            undefined,
        )
    if all(iv.low > 0 for iv in primary):
        return Verdict("helped", [*sentences, f"By the rule{where}: the descriptions helped."])
    if all(iv.high < 0 for iv in primary):
        return Verdict("hurt", [*sentences, f"By the rule{where}: the descriptions hurt."])
    failing = [iv for iv in primary if not iv.low > 0]
    names = ", ".join(f"{iv.b}" for iv in failing)
    sentences.append(
        f"By the rule{where}: inconclusive; text is not above {names} by more than this study can tell apart."
    )
    below = [iv.b for iv in primary if iv.high < 0]
    if below:
        sentences.append(f"Text ended below {', '.join(below)} (its interval lies under 0).")
    return Verdict("inconclusive", sentences, [f"{iv.a} − {iv.b}" for iv in failing])


def control_meaning(arm: str) -> str:
    return WHAT_CONTROLS_REMOVE.get(arm, "")


def primary_names(arms: Sequence[str]) -> list[str]:
    """The primary comparisons of a study of ``arms``, in the rule's order."""
    return [f"{TEXT} − {b}" for b in (BASELINE, *[c for c in CONTROLS if c in arms])] if TEXT in arms else []
