"""Differences between arms of a study with hierarchical bootstrap intervals: seeds, then test images.

Every run (an arm trained with one seed) is scored on the same image resamples
(:func:`~.bootstrap.resample`). A draw of the hierarchical bootstrap takes one image resample for
every arm (paired), resamples each arm's seeds with replacement and averages its runs over them,
so an interval covers both the choice of test images and training noise. Observed values are
means over seeds of the runs' metrics on all test images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bootstrap import Resampled
from .intervals import Interval, percentile_interval


@dataclass
class ArmDraws:
    """An arm's metrics per hierarchical draw (means over its resampled seeds)."""

    map50: np.ndarray  # [D]
    map: np.ndarray  # [D]
    ap50: np.ndarray  # [D, C]
    confusion: np.ndarray  # [D, C+1, C+1], float (a mean of counts)


@dataclass
class ArmSummary:
    """An arm's observed metrics over its seeds."""

    name: str
    seeds: int
    map50_mean: float | None
    map50_sd: float | None
    map_mean: float | None
    map_sd: float | None
    per_class_ap50: dict[str, float | None] = field(default_factory=dict)
    pair_counts: tuple[float, float] | None = None  # mean (a -> b, b -> a) confusions

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.name,
            "seeds": self.seeds,
            "map50_mean": self.map50_mean,
            "map50_sd": self.map50_sd,
            "map_mean": self.map_mean,
            "map_sd": self.map_sd,
            "per_class_ap50": self.per_class_ap50,
            "pair_counts": list(self.pair_counts) if self.pair_counts is not None else None,
        }


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    if not defined.size:
        return None, None
    return float(defined.mean()), float(defined.std(ddof=1)) if defined.size > 1 else 0.0


def summarize_arm(name: str, metrics: Sequence[Mapping[str, Any]], pair: tuple[str, str] | None) -> ArmSummary:
    """Mean and sd over an arm's runs (each run's evaluator metrics on the test images)."""
    m50 = _mean_sd([m.get("map50") for m in metrics])
    m = _mean_sd([m.get("map") for m in metrics])
    classes = list(metrics[0]["per_class"]) if metrics else []
    per_class = {c: _mean_sd([r["per_class"][c].get("ap50") for r in metrics])[0] for c in classes}
    counts = None
    if pair is not None and metrics:
        labels = metrics[0]["confusion_matrix"]["labels"]
        ia, ib = labels.index(pair[0]), labels.index(pair[1])
        ab = [r["confusion_matrix"]["counts"][ia][ib] for r in metrics]
        ba = [r["confusion_matrix"]["counts"][ib][ia] for r in metrics]
        counts = (float(np.mean(ab)), float(np.mean(ba)))
    return ArmSummary(name, len(metrics), m50[0], m50[1], m[0], m[1], per_class, counts)


def arm_draws(runs: Sequence[Resampled], seeds_drawn: np.ndarray) -> ArmDraws:
    """Per draw ``d``, the mean of the runs chosen by ``seeds_drawn[d]`` (``[D, S]`` run indexes)."""
    stack = lambda attr: np.stack([getattr(r, attr) for r in runs])  # noqa: E731  [S, D, ...]
    draws = np.arange(seeds_drawn.shape[0])[:, None]
    with np.errstate(invalid="ignore"):
        return ArmDraws(
            map50=np.nanmean(stack("map50")[seeds_drawn, draws], axis=1),
            map=np.nanmean(stack("map")[seeds_drawn, draws], axis=1),
            ap50=np.nanmean(stack("ap50")[seeds_drawn, draws], axis=1),
            confusion=stack("confusion")[seeds_drawn, draws].astype(np.float64).mean(axis=1),
        )


def hierarchical_draws(arms: Mapping[str, Sequence[Resampled]], seed: int = 0) -> dict[str, ArmDraws]:
    """Every arm's :class:`ArmDraws`: its seeds resampled with replacement in every image draw."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, runs in arms.items():
        draws = len(runs[0].map50)
        chosen = rng.integers(0, len(runs), size=(draws, len(runs)))
        out[name] = arm_draws(runs, chosen)
    return out


@dataclass
class Comparison:
    """Arm ``a`` minus arm ``b``: mAP@0.5, mAP@0.5:0.95, per-class AP@0.5 and the pair's confusions."""

    a: str
    b: str
    map50: Interval
    map: Interval
    per_class_ap50: dict[str, Interval]
    pair_confusions: tuple[Interval, Interval] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "map50": self.map50.to_dict(),
            "map": self.map.to_dict(),
            "per_class_ap50": {c: i.to_dict() for c, i in self.per_class_ap50.items()},
            "pair_confusions": [i.to_dict() for i in self.pair_confusions] if self.pair_confusions else None,
        }


def _diff(a: float | None, b: float | None) -> float:
    return float("nan") if a is None or b is None else a - b


def compare_arms(
    a: ArmSummary,
    b: ArmSummary,
    draws: Mapping[str, ArmDraws],
    class_names: Sequence[str],
    pair: tuple[str, str] | None = None,
    level: float = 0.95,
) -> Comparison:
    """The differences ``a - b`` with hierarchical-bootstrap percentile intervals."""
    da, db = draws[a.name], draws[b.name]
    per_class = {
        c: percentile_interval(
            da.ap50[:, k] - db.ap50[:, k],
            a.name,
            b.name,
            _diff(a.per_class_ap50.get(c), b.per_class_ap50.get(c)),
            level,
            f"ap50 {c}",
        )
        for k, c in enumerate(class_names)
    }
    confusions = None
    if pair is not None and a.pair_counts is not None and b.pair_counts is not None:
        ia, ib = class_names.index(pair[0]), class_names.index(pair[1])
        confusions = (
            percentile_interval(
                da.confusion[:, ia, ib] - db.confusion[:, ia, ib],
                a.name,
                b.name,
                a.pair_counts[0] - b.pair_counts[0],
                level,
                f"{pair[0]} as {pair[1]}",
            ),
            percentile_interval(
                da.confusion[:, ib, ia] - db.confusion[:, ib, ia],
                a.name,
                b.name,
                a.pair_counts[1] - b.pair_counts[1],
                level,
                f"{pair[1]} as {pair[0]}",
            ),
        )
    return Comparison(
        a.name,
        b.name,
        percentile_interval(da.map50 - db.map50, a.name, b.name, _diff(a.map50_mean, b.map50_mean), level, "map50"),
        percentile_interval(da.map - db.map, a.name, b.name, _diff(a.map_mean, b.map_mean), level, "map"),
        per_class,
        confusions,
    )


def resolution(interval: Interval, num_images: int) -> dict[str, Any]:
    """The smallest difference this test set resolves (the interval's half-width) and how many test
    images would halve it (intervals shrink as one over the square root of the images)."""
    return {"half_width": interval.half_width, "test_images": num_images, "images_to_halve": 4 * num_images}
