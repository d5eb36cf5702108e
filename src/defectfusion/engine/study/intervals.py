"""Intervals of differences between arms of a study: training seeds and test images, both sampled.

A study trains each arm with ``S`` seeds and scores every run on the same ``N`` test images. The
difference of two arms' means has two sources of noise, estimated separately (``docs/method.md``):

- **seeds**: how much a run's value moves with its training seed. With two or three seeds an arm's
  own spread rests on one or two degrees of freedom, too few to trust, so it is pooled over every
  trained arm of the study (a one-way random-effects model: ``k (S - 1)`` degrees of freedom), and
  an arm whose own spread is larger keeps its own (the larger of the two: the price of not assuming
  equal seed noise).
- **images**: what every seed of an arm shares, its image-by-image gain, from the paired image
  bootstrap: the *covariance between different runs'* resampled values (a run's own variance would
  count its seed-specific image noise a second time; the seed part holds that already).

The interval is ``d ± t(df) * sqrt(V_seed + V_image)`` with Satterthwaite's degrees of freedom. Its
coverage and false-alarm rate are checked by simulation (:mod:`.calibration`). With one seed per arm
the seed variance is unknown: the interval covers the images only and says so
(``seed_variance is None``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A difference ``a - b`` of one metric with its interval and where its width comes from.

    ``seed_variance`` and ``image_variance`` are the two parts of the squared standard error
    (``seed_variance`` is ``None`` when one seed per arm leaves it unknown); ``df`` the degrees of
    freedom of the t quantile; ``p_value`` two-sided, of "no difference".
    """

    a: str
    b: str
    observed: float
    low: float
    high: float
    level: float
    draws: int
    metric: str = "map50"
    seed_variance: float | None = None
    image_variance: float = 0.0
    df: float = math.inf
    seeds: tuple[int, int] = (1, 1)
    images: int = 0
    p_value: float = float("nan")

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def defined(self) -> bool:
        return math.isfinite(self.observed) and math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def standard_error(self) -> float:
        return math.sqrt((self.seed_variance or 0.0) + self.image_variance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "difference": _json_float(self.observed),
            "low": _json_float(self.low),
            "high": _json_float(self.high),
            "level": self.level,
            "draws": self.draws,
            "seed_variance": None if self.seed_variance is None else _json_float(self.seed_variance),
            "image_variance": _json_float(self.image_variance),
            "df": None if not math.isfinite(self.df) else self.df,
            "seeds": list(self.seeds),
            "images": self.images,
            "p_value": _json_float(self.p_value),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        nan = float("nan")
        return cls(
            a=data["a"],
            b=data["b"],
            observed=nan if data["difference"] is None else data["difference"],
            low=nan if data["low"] is None else data["low"],
            high=nan if data["high"] is None else data["high"],
            level=data["level"],
            draws=data["draws"],
            metric=data.get("metric", "map50"),
            seed_variance=data.get("seed_variance"),
            image_variance=data.get("image_variance") or 0.0,
            df=math.inf if data.get("df") is None else data["df"],
            seeds=tuple(data.get("seeds", (1, 1))),
            images=data.get("images", 0),
            p_value=nan if data.get("p_value") is None else data["p_value"],
        )


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class ArmValues:
    """One arm's values of one metric on the scoring images.

    Attributes:
        name: the arm.
        observed: ``[S]`` each run's value on all scoring images (one per seed).
        draws: ``[S, D]`` each run's value on each image draw; draw ``d`` resamples the same images
            for every arm (paired).
        fixed: a given model, not a training procedure (the baseline): nothing to sample but images.
    """

    name: str
    observed: np.ndarray
    draws: np.ndarray
    fixed: bool = False

    @property
    def seeds(self) -> int:
        return len(self.observed)


@dataclass(frozen=True)
class SeedNoise:
    """A run's seed variance pooled over a study's trained arms (one metric)."""

    variance: float
    df: int
    arms: tuple[str, ...]


def pooled_seed_noise(arms: Sequence[ArmValues]) -> SeedNoise | None:
    """The within-arm variance of the runs' values, pooled over the trained arms with >= 2 seeds
    (``None``: no arm has two seeds, or a value is undefined)."""
    trained = [a for a in arms if not a.fixed and a.seeds > 1]
    if not trained or any(not np.isfinite(a.observed).all() for a in trained):
        return None
    squares = sum(float(((a.observed - a.observed.mean()) ** 2).sum()) for a in trained)
    df = sum(a.seeds - 1 for a in trained)
    return SeedNoise(squares / df, df, tuple(a.name for a in trained))


def _mean_off_diagonal(cov: np.ndarray) -> float:
    n = cov.shape[0]
    return float((cov.sum() - np.trace(cov)) / (n * (n - 1)))


def _seed_part(arm: ArmValues, noise: SeedNoise) -> float:
    """``Var`` of the arm's mean over its seeds: the pooled variance, or the arm's own when larger."""
    if arm.fixed:
        return 0.0
    own = float(np.var(arm.observed, ddof=1)) if arm.seeds > 1 else 0.0
    return max(noise.variance, own) / arm.seeds


def _shared_image_part(a: ArmValues, b: ArmValues) -> float:
    """Image variance of ``mean(a) - mean(b)`` that every seed shares, from the draws ``[S, D]``.

    Within an arm, the mean covariance of *different* runs' draws (a fixed model: its variance; a
    trained arm with one run: its variance, seed-specific image noise included).
    """
    both = np.cov(np.vstack([a.draws, b.draws]))
    sa = a.seeds
    caa = _mean_off_diagonal(both[:sa, :sa]) if sa > 1 else float(both[0, 0])
    cbb = _mean_off_diagonal(both[sa:, sa:]) if b.seeds > 1 else float(both[sa, sa])
    cab = float(both[:sa, sa:].mean())
    return max(0.0, caa + cbb - 2 * cab)


def compare(
    a: ArmValues,
    b: ArmValues,
    seed_noise: SeedNoise | None,
    *,
    level: float = 0.95,
    metric: str = "map50",
    images: int = 0,
) -> Interval:
    """The difference of the arms' means ``a - b`` with its seeds-and-images interval.

    ``seed_noise``: from :func:`pooled_seed_noise` over the study's arms; ``None`` (one seed per arm)
    leaves the seed variance unknown, and the interval covers every image-resampling variance only.
    Draws where either arm's metric is undefined (NaN: a class absent from a resample) are left out;
    an undefined observed value gives an undefined interval.
    """
    nan = float("nan")
    observed = float(np.mean(a.observed) - np.mean(b.observed))
    draws_a, draws_b = np.atleast_2d(a.draws), np.atleast_2d(b.draws)
    finite = np.isfinite(draws_a).all(axis=0) & np.isfinite(draws_b).all(axis=0)
    a = ArmValues(a.name, np.asarray(a.observed, dtype=np.float64), draws_a[:, finite], a.fixed)
    b = ArmValues(b.name, np.asarray(b.observed, dtype=np.float64), draws_b[:, finite], b.fixed)
    used = int(finite.sum())
    if not math.isfinite(observed) or used < 2:
        return Interval(a.name, b.name, observed, nan, nan, level, used, metric, seeds=(a.seeds, b.seeds))
    trained = not (a.fixed and b.fixed)
    if seed_noise is None and trained:
        v_seed, df_seed = None, math.inf
        v_image = float(np.var(a.draws.mean(axis=0) - b.draws.mean(axis=0), ddof=1))
    else:
        v_seed = _seed_part(a, seed_noise) + _seed_part(b, seed_noise) if trained else 0.0
        df_seed = seed_noise.df if seed_noise is not None else math.inf
        v_image = _shared_image_part(a, b)
    v_seed_value = v_seed or 0.0
    total = v_seed_value + v_image
    df_image = max(images - 1, 1) if images else math.inf
    denominator = (v_seed_value**2 / df_seed if v_seed_value else 0.0) + v_image**2 / df_image
    df = total**2 / denominator if denominator > 0 else math.inf
    low, high, p = _t_interval(observed, math.sqrt(total), df, level)
    return Interval(
        a.name,
        b.name,
        observed,
        low,
        high,
        level,
        used,
        metric,
        seed_variance=v_seed,
        image_variance=v_image,
        df=df,
        seeds=(a.seeds, b.seeds),
        images=images,
        p_value=p,
    )


def t_quantile(level: float, df: float) -> float:
    """The two-sided ``level`` quantile of Student's t (the normal one for infinite df)."""
    upper = 0.5 + level / 2
    return float(stats.t.ppf(upper, df)) if math.isfinite(df) else float(stats.norm.ppf(upper))


def _t_interval(observed: float, se: float, df: float, level: float) -> tuple[float, float, float]:
    if se == 0.0:
        return observed, observed, 1.0 if observed == 0 else 0.0
    q = t_quantile(level, df)
    tail = stats.t.sf(abs(observed) / se, df) if math.isfinite(df) else stats.norm.sf(abs(observed) / se)
    return observed - q * se, observed + q * se, float(2 * tail)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    defined = np.flatnonzero(np.isfinite(p))
    order = defined[np.argsort(p[defined], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
