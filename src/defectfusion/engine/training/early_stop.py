"""When a phase stops early: validation mAP@0.5 fell too far below its best, or stopped improving."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import EarlyStopConfig

if TYPE_CHECKING:
    from .phase_records import Score


def early_stop_reason(map50: float | None, best: Score, bad_evaluations: int, early: EarlyStopConfig) -> str:
    """Why the phase stops after an evaluation of ``map50`` (empty: it goes on).

    ``best``: the phase's best evaluation so far, this one included;
    ``bad_evaluations``: evaluations in a row without a new best.
    """
    best_map50 = best.map50
    if map50 is not None and best_map50 is not None and early.drop is not None and map50 < best_map50 - early.drop:
        return (
            f"validation mAP@0.5 {map50:.4f} fell more than {early.drop} below the best "
            f"{best_map50:.4f} (epoch {best.epoch})"
        )
    if early.patience is not None and bad_evaluations >= early.patience:
        return f"no new best in {early.patience} evaluations"
    return ""
