"""A run's final model: the best on validation of its baseline (or starting model) and its phases.

The baseline is a candidate, listed first, and wins ties: a run's final model is never worse on
validation than where it started. Its weights are saved to ``<run>/final`` and the choice says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...models.checkpoint import load_detector, save_detector


def fmt_metric(value: float | None) -> str:
    """A validation metric in a sentence: four decimals, ``n/a`` when undefined."""
    return "n/a" if value is None else f"{value:.4f}"


def choose_final(summary: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """``summary["final"]`` of a run whose ``summary`` holds its baseline (or start) and phases; ``None``
    when there is nothing to choose from. Writes the chosen weights to ``out/final``."""
    candidates: list[tuple[str, float | None, float | None, str]] = []
    reference = summary.get("baseline") or summary.get("start")
    if reference is not None:
        candidates.append(
            (
                "baseline" if summary.get("baseline") else "start",
                reference["map50"],
                reference["map"],
                reference.get("checkpoint") or reference.get("source"),
            )
        )
    baseline_phase = (summary.get("baseline") or {}).get("source")
    for name, outcome in summary["phases"].items():
        if baseline_phase != f"phase {name}":
            candidates.append((name, outcome["best_map50"], outcome["best_map"], outcome["best_dir"]))
    if not candidates:
        return None
    best = max(candidates, key=lambda c: -1.0 if c[1] is None else c[1])  # the first of equals: the baseline
    label, map50, map_, checkpoint = best
    if label in {"baseline", "start"} and len(candidates) > 1:
        reason = f"no phase beat the {label} on validation mAP@0.5 ({fmt_metric(map50)}); the {label} is kept"
    elif len(candidates) > 1:
        reason = (
            f"{label} has the best validation mAP@0.5 ({fmt_metric(map50)}) vs the {candidates[0][0]} "
            f"({fmt_metric(candidates[0][1])})"
        )
    else:
        reason = f"only {label} was run"
    final_dir = out / "final"
    if checkpoint and Path(checkpoint, "config.json").is_file():
        save_detector(load_detector(checkpoint), final_dir)
    return {
        "phase": label,
        "checkpoint": str(final_dir),
        "source": checkpoint,
        "map50": map50,
        "map": map_,
        "reason": reason,
    }
