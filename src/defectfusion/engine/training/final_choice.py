"""A run's final model: the best on validation of its baseline (or starting model) and its phases.

The baseline is a candidate, listed first, and wins ties: a run's final model is never worse on
validation than where it started. Its weights are saved to ``<run>/final`` and the choice says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...models.checkpoint import load_detector, save_detector
from ...structures import Scored
from .phase_records import PhaseOutcome


def fmt_metric(value: float | None) -> str:
    """A validation metric in a sentence: four decimals, ``n/a`` when undefined."""
    return "n/a" if value is None else f"{value:.4f}"


@dataclass(frozen=True)
class Candidate:
    """A model the final choice may keep: the run's reference (its ``baseline`` or ``start``) or a phase's best."""

    label: str
    map50: float | None
    map: float | None
    checkpoint: str | None
    reference: bool = False


@dataclass(frozen=True)
class FinalChoice:
    """``summary.json``'s ``final``: which model, where its weights are, its validation scores and why."""

    phase: str
    checkpoint: str
    source: str | None
    map50: float | None
    map: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidates(summary: dict[str, Any]) -> list[Candidate]:
    """The run's reference first (it wins ties), then each phase's best that is not the reference itself."""
    found = []
    label = "baseline" if summary.get("baseline") else "start"
    reference = Scored.from_dict(summary.get(label))
    if reference is not None:
        found.append(Candidate(label, reference.map50, reference.map, reference.checkpoint or reference.source, True))
    baseline_phase = reference.source if reference is not None and label == "baseline" else None
    for name, entry in summary["phases"].items():
        if baseline_phase != f"phase {name}":
            outcome = PhaseOutcome.from_dict(entry)
            found.append(Candidate(name, outcome.best_map50, outcome.best_map, outcome.best_dir))
    return found


def choose_final(summary: dict[str, Any], out: Path) -> FinalChoice | None:
    """The final model of a run whose ``summary`` holds its baseline (or start) and phases; ``None`` when
    there is nothing to choose from. Writes the chosen weights to ``out/final``."""
    among = candidates(summary)
    if not among:
        return None
    best = max(among, key=lambda c: -1.0 if c.map50 is None else c.map50)  # the first of equals: the reference
    if best.reference and len(among) > 1:
        reason = (
            f"no phase beat the {best.label} on validation mAP@0.5 ({fmt_metric(best.map50)}); the {best.label} is kept"
        )
    elif len(among) > 1:
        first = among[0]
        reason = (
            f"{best.label} has the best validation mAP@0.5 ({fmt_metric(best.map50)}) vs the {first.label} "
            f"({fmt_metric(first.map50)})"
        )
    else:
        reason = f"only {best.label} was run"
    final_dir = out / "final"
    if best.checkpoint and Path(best.checkpoint, "config.json").is_file():
        save_detector(load_detector(best.checkpoint), final_dir)
    return FinalChoice(best.label, str(final_dir), best.checkpoint, best.map50, best.map, reason)
