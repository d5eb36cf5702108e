"""How long the rest of a run will take, from the steady-state speed of its steps.

The first steps of a run are slower (allocator warm-up, caches, the first data loads: 1.5 s/step
against 0.75 steady was seen), so the estimate ignores them and uses the median of the recent
steps. It covers training steps only (validation comes on top) and assumes later phases step as
fast as this one, which over-estimates phases that train less (phase 1's steps are cheaper).
"""

from __future__ import annotations

import statistics
from collections import deque


class StepClock:
    """Median seconds per step over the last ``window`` steps, after the first ``skip``."""

    def __init__(self, skip: int = 5, window: int = 50) -> None:
        self.skip, self.seen = skip, 0
        self.recent: deque[float] = deque(maxlen=window)

    def lap(self, seconds: float) -> None:
        self.seen += 1
        if self.seen > self.skip:
            self.recent.append(seconds)

    @property
    def seconds_per_step(self) -> float | None:
        return statistics.median(self.recent) if self.recent else None

    def eta(self, steps_left: int) -> float | None:
        per_step = self.seconds_per_step
        return None if per_step is None else per_step * max(0, steps_left)


def format_duration(seconds: float | None) -> str:
    """``2h05m``, ``12m30s`` or ``45s``; ``?`` before the speed is known."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
