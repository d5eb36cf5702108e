"""Intervals of differences between models: what a comparison reports and how sure it is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bootstrap import Resampled


@dataclass(frozen=True)
class Interval:
    """A difference ``a - b`` with its bootstrap interval."""

    a: str
    b: str
    observed: float
    low: float
    high: float
    level: float
    draws: int
    metric: str = "map50"

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "difference": self.observed,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "draws": self.draws,
        }


def percentile_interval(
    diff: np.ndarray, a: str, b: str, observed: float, level: float = 0.95, metric: str = "map50"
) -> Interval:
    """Percentile interval of resampled differences ``a - b`` (undefined draws left out)."""
    diff = np.asarray(diff, dtype=np.float64)
    diff = diff[np.isfinite(diff)]
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail]).tolist() if diff.size else (float("nan"),) * 2
    return Interval(a, b, float(observed), float(low), float(high), level, int(diff.size), metric)


def difference_interval(
    samples: Mapping[str, Resampled], a: str, b: str, observed: float, level: float = 0.95
) -> Interval:
    """Percentile interval of ``mAP@0.5(a) - mAP@0.5(b)`` over the paired draws."""
    return percentile_interval(samples[a].map50 - samples[b].map50, a, b, observed, level)
