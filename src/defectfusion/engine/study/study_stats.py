"""A study's comparisons: one primary family decided by the rule, everything else exploratory.

Every run (an arm trained with one seed) and the baseline are scored on the same image draws
(:func:`~.bootstrap.resample`); :func:`~.intervals.compare` turns each pair of arms into an interval
over seeds (pooled over the trained arms) and test images. The family the rule reads is fixed
before the numbers: test mAP@0.5 of ``text`` against the baseline and against every control arm the
study ran. The rest (mAP@0.5:0.95, per-class AP, the confusable pair's counts, other pairs) is
exploratory: reported with uncorrected intervals and Holm-adjusted p-values within its family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...structures import Metrics
from ..evaluation.bootstrap import Resampled
from .intervals import ArmValues, Interval, SeedNoise, compare, holm, pooled_seed_noise

TEXT = "text"
BASELINE = "baseline"
CONTROLS = ("shuffled", "random", "continued")  # what each control removes: the docs/method.md table
WITHOUT_FUSION = "continued"  # the control arm with no fusion head at all
PRIMARY_METRIC = "map50"


@dataclass(frozen=True)
class RunScores:
    """One model on the scoring images: the evaluator's metrics and its values on every draw."""

    key: str
    metrics: Metrics
    draws: Resampled


@dataclass(frozen=True)
class Metric:
    """A scalar the study compares: how to read it from metrics and from the draws."""

    key: str  # "map50", "map", "ap50:<class>", "confusion:<a>-><b>"
    label: str
    observed: Callable[[Metrics], float]
    drawn: Callable[[Resampled], np.ndarray]


def _value(v: Any) -> float:
    return float("nan") if v is None else float(v)


MAP50 = Metric("map50", "mAP@0.5", lambda m: _value(m.map50), lambda r: r.map50)
MAP = Metric("map", "mAP@0.5:0.95", lambda m: _value(m.map), lambda r: r.map)


def class_ap50(name: str, k: int) -> Metric:
    return Metric(
        f"ap50:{name}",
        f"AP@0.5 {name}",
        lambda m: _value(m.per_class[name].ap50),
        lambda r: r.ap50[:, k],
    )


def confusion(a: str, b: str, i: int, j: int) -> Metric:
    return Metric(
        f"confusion:{a}->{b}",
        f"{a} as {b} (count)",
        lambda m: float(m.confusion_matrix["counts"][i][j]),
        lambda r: r.confusion[:, i, j].astype(np.float64),
    )


def arm_values(name: str, runs: Sequence[RunScores], metric: Metric, fixed: bool = False) -> ArmValues:
    return ArmValues(
        name,
        np.array([metric.observed(r.metrics) for r in runs], dtype=np.float64),
        np.stack([np.asarray(metric.drawn(r.draws), dtype=np.float64) for r in runs]),
        fixed,
    )


@dataclass
class ArmSummary:
    """An arm's observed metrics over its seeds (mean, sd) on the scoring images."""

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
    return float(defined.mean()), float(defined.std(ddof=1)) if defined.size > 1 else None


def summarize_arm(name: str, metrics: Sequence[Metrics], pair: tuple[str, str] | None) -> ArmSummary:
    """Mean and sd (``None`` with one run) over an arm's runs' evaluator metrics."""
    m50 = _mean_sd([m.map50 for m in metrics])
    m = _mean_sd([m.map for m in metrics])
    classes = metrics[0].class_names if metrics else []
    per_class = {c: _mean_sd([r.ap50_of(c) for r in metrics])[0] for c in classes}
    counts = None
    if pair is not None and metrics:
        labels = metrics[0].confusion_matrix["labels"]
        ia, ib = labels.index(pair[0]), labels.index(pair[1])
        ab = [r.confusion_matrix["counts"][ia][ib] for r in metrics]
        ba = [r.confusion_matrix["counts"][ib][ia] for r in metrics]
        counts = (float(np.mean(ab)), float(np.mean(ba)))
    return ArmSummary(name, len(metrics), m50[0], m50[1], m[0], m[1], per_class, counts)


@dataclass
class Exploratory:
    """An exploratory interval (uncorrected) with its Holm-adjusted p-value within its family."""

    family: str
    interval: Interval
    p_holm: float

    def to_dict(self) -> dict[str, Any]:
        p = self.p_holm
        return {"family": self.family, **self.interval.to_dict(), "p_holm": p if math.isfinite(p) else None}


@dataclass
class FractionComparisons:
    """What a study concludes at one training fraction."""

    primary: list[Interval]  # text − baseline, then text − each control that was run
    exploratory: list[Exploratory]
    seed_noise: dict[str, SeedNoise | None]  # per metric key

    def primary_dicts(self) -> list[dict[str, Any]]:
        return [iv.to_dict() for iv in self.primary]


def _pairs(arms: Sequence[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(primary pairs, other pairs): text against the baseline and the controls; the rest."""
    primary = [(TEXT, BASELINE)] if TEXT in arms else []
    primary += [(TEXT, c) for c in CONTROLS if TEXT in arms and c in arms]
    everything = [(a, BASELINE) for a in arms] + [(a, b) for i, a in enumerate(arms) for b in arms[i + 1 :]]
    return primary, [p for p in everything if p not in primary]


def compare_fraction(
    arms: Mapping[str, Sequence[RunScores]],
    baseline: RunScores,
    class_names: Sequence[str],
    pair: tuple[str, str] | None,
    images: int,
    level: float = 0.95,
) -> FractionComparisons:
    """The primary family and the exploratory ones for one training fraction's arms."""
    names = list(arms)
    primary_pairs, other_pairs = _pairs(names)
    # per class and for the confusable pair: text against what the rule compares it with, and each
    # alternative wording against text (which separates the pair best)
    text_pairs = primary_pairs + [(a, TEXT) for a in names if a.startswith("desc:") and TEXT in names]

    def values(metric: Metric) -> dict[str, ArmValues]:
        out = {a: arm_values(a, runs, metric) for a, runs in arms.items()}
        out[BASELINE] = arm_values(BASELINE, [baseline], metric, fixed=True)
        return out

    noise: dict[str, SeedNoise | None] = {}

    def intervals(metric: Metric, pairs: Sequence[tuple[str, str]]) -> list[Interval]:
        vals = values(metric)
        with np.errstate(invalid="ignore", divide="ignore"):
            noise[metric.key] = pooled_seed_noise([v for k, v in vals.items() if k != BASELINE])
            return [
                compare(vals[a], vals[b], noise[metric.key], level=level, metric=metric.key, images=images)
                for a, b in pairs
            ]

    primary = intervals(MAP50, primary_pairs)
    families: list[tuple[str, list[Interval]]] = [
        ("mAP@0.5, other pairs", intervals(MAP50, other_pairs)),
        ("mAP@0.5:0.95", intervals(MAP, [*primary_pairs, *other_pairs])),
    ]
    per_class = [iv for k, c in enumerate(class_names) for iv in intervals(class_ap50(c, k), text_pairs)]
    families.append(("per-class AP@0.5", per_class))
    if pair is not None:
        i, j = class_names.index(pair[0]), class_names.index(pair[1])
        counts = intervals(confusion(pair[0], pair[1], i, j), text_pairs)
        counts += intervals(confusion(pair[1], pair[0], j, i), text_pairs)
        families.append(("confusable pair (counts)", counts))
    exploratory = []
    for family, ivs in families:
        for iv, p in zip(ivs, holm([iv.p_value for iv in ivs]), strict=True):
            exploratory.append(Exploratory(family, iv, p))
    return FractionComparisons(primary, exploratory, noise)
