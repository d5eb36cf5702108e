"""A study's verdict from a rule written before the numbers: helped, hurt, or inconclusive."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .intervals import Interval
from .study_stats import Comparison


def rule_text(has_random: bool) -> str:
    """The decision rule, stated before any number is seen (printed above the results)."""
    against = "text − random and text − baseline" if has_random else "text − baseline"
    both = "are both" if has_random else "is"
    either = "either interval lies" if has_random else "the interval lies"
    caveat = (
        ""
        if has_random
        else " Without the random arm this cannot separate the language from the extra head and training."
    )
    return (
        f"The descriptions helped if {against} on test mAP@0.5 {both} above 0 with 95% intervals "
        f"(hierarchical bootstrap: seeds within each arm, then test images, the same draw for both arms) that "
        f"exclude 0; they hurt if {either} entirely below 0; otherwise the result is inconclusive at this test "
        f"size.{caveat}"
    )


@dataclass
class Verdict:
    outcome: str  # "helped" | "hurt" | "inconclusive" | "no text arm"
    sentences: list[str]


def _fmt(value: float) -> str:
    return f"{value:+.3f}"


def _describe(iv: Interval) -> str:
    return f"{iv.a} − {iv.b} = {_fmt(iv.observed)} (95% interval {_fmt(iv.low)} to {_fmt(iv.high)})"


def decide(comparisons: Mapping[tuple[str, str], Comparison], label: str = "") -> Verdict:
    """Apply :func:`rule_text` to the text arm's comparisons with random (if run) and the baseline."""
    where = f" ({label})" if label else ""
    vs_base = comparisons.get(("text", "baseline"))
    if vs_base is None:
        return Verdict("no text arm", [f"No text arm was run{where}: there is nothing to decide."])
    tested = [vs_base.map50]
    vs_random = comparisons.get(("text", "random"))
    if vs_random is not None:
        tested.insert(0, vs_random.map50)
    sentences = [f"{_describe(iv)}." for iv in tested]
    if all(iv.low > 0 for iv in tested):
        outcome = "helped"
        sentences.append(f"By the rule{where}: the descriptions helped.")
    elif any(iv.high < 0 for iv in tested):
        outcome = "hurt"
        sentences.append(f"By the rule{where}: the descriptions hurt.")
    else:
        outcome = "inconclusive"
        widest = max(iv.half_width for iv in tested)
        sentences.append(
            f"By the rule{where}: inconclusive at this test size; differences smaller than about "
            f"±{widest:.3f} mAP@0.5 cannot be told from noise here."
        )
    continued = comparisons.get(("text", "continued"))
    if continued is not None:
        sentences.append(f"Against the same training without a fusion head: {_describe(continued.map50)}.")
    return Verdict(outcome, sentences)
