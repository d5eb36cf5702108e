"""When a phase stops early: a drop below its best, or no new best for a while."""

from __future__ import annotations

import pytest

from defectfusion.config import EarlyStopConfig
from defectfusion.engine.training.early_stop import early_stop_reason
from defectfusion.engine.training.phase_records import Score


@pytest.mark.parametrize(
    ("map50", "bad", "expected"),
    [
        (0.50, 0, ""),
        (0.47, 1, "fell more than 0.02 below the best 0.5000 (epoch 3)"),
        (0.49, 3, "no new best in 3 evaluations"),
        (None, 1, ""),
    ],
)
def test_a_phase_stops_early_on_a_drop_or_on_patience(map50, bad, expected):
    reason = early_stop_reason(map50, Score(0.5, None, epoch=3), bad, EarlyStopConfig(drop=0.02, patience=3))
    assert (expected in reason) and (bool(reason) == bool(expected))
