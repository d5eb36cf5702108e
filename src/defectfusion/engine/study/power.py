"""How small a difference can a study see, and what would it take to see a given one?

From an interval's two variance parts (:mod:`.intervals`): the seed part shrinks as one over the
seeds per arm, the image part as one over the scoring images. The smallest true difference found
with probability ``power`` by a two-sided test at ``1 - level`` is ``(t(level) + t(power)) * SE``
(Student's t on the interval's degrees of freedom), the usual normal-approximation formula with t
quantiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy import stats

from .intervals import Interval, SeedNoise

MAX_SEEDS = 100
MAX_IMAGE_FACTOR = 1000


@dataclass(frozen=True)
class Power:
    """Detectable differences of one comparison, and what a target difference would need.

    ``seeds_for[t]`` / ``images_for[t]``: the fewest seeds per arm (at this study's images) or scoring
    images (at its seeds) with which a true difference ``t`` is found with ``power``; ``None`` when the
    other source of noise alone keeps it out of reach.
    """

    a: str
    b: str
    power: float
    detectable: float  # smallest true difference found with `power` at this study's size
    seeds: int
    images: int
    seeds_for: dict[float, int | None]
    images_for: dict[float, int | None]
    seed_variance_known: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "power": self.power,
            "detectable": self.detectable,
            "seeds": self.seeds,
            "images": self.images,
            "seeds_for": {str(t): v for t, v in self.seeds_for.items()},
            "images_for": {str(t): v for t, v in self.images_for.items()},
            "seed_variance_known": self.seed_variance_known,
        }


def _quantiles(level: float, power: float, df: float) -> float:
    if not math.isfinite(df):
        return float(stats.norm.ppf(0.5 + level / 2) + stats.norm.ppf(power))
    return float(stats.t.ppf(0.5 + level / 2, df) + stats.t.ppf(power, df))


def _detectable(
    v_seed: float, v_image: float, seed_df_per_seed: float, seeds: int, images: int, level: float, power: float
) -> float:
    """Detectable difference with ``v_seed`` at one seed and ``v_image`` at one image scaled to a size."""
    seed_part, image_part = v_seed / seeds, v_image / images
    df_seed = seed_df_per_seed * (seeds - 1) if seed_df_per_seed else math.inf
    denominator = (seed_part**2 / df_seed if seed_part and df_seed > 0 else 0.0) + image_part**2 / max(images - 1, 1)
    total = seed_part + image_part
    df = total**2 / denominator if denominator > 0 else math.inf
    return _quantiles(level, power, df) * math.sqrt(total)


def _fewest(enough, low: int, high: int) -> int | None:
    """The smallest ``n`` in ``[low, high]`` with ``enough(n)`` (monotone: more is never worse)."""
    if not enough(high):
        return None
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle + 1, high)
    return low


def power_of(
    interval: Interval,
    seed_noise: SeedNoise | None,
    targets: tuple[float, ...] = (0.01, 0.035),
    power: float = 0.8,
) -> Power:
    """:class:`Power` of the comparison ``interval`` describes (its arms' seeds, its images)."""
    seeds = max(interval.seeds)  # a fixed model counts one; trained arms have the study's seeds
    images = max(interval.images, 2)
    known = interval.seed_variance is not None and seed_noise is not None
    # both parts at one seed and one image, so that they can be scaled to any size
    v_seed = (interval.seed_variance or 0.0) * seeds
    v_image = interval.image_variance * images
    per_seed_df = seed_noise.df / max(seeds - 1, 1) if known else 0.0
    level = interval.level

    def detectable(s: int, n: int) -> float:
        return _detectable(v_seed, v_image, per_seed_df, s, n, level, power)

    seeds_for = {t: _fewest(lambda s, t=t: detectable(s, images) <= t, 2, MAX_SEEDS) for t in targets}
    images_for = {t: _fewest(lambda n, t=t: detectable(seeds, n) <= t, 2, images * MAX_IMAGE_FACTOR) for t in targets}
    return Power(
        interval.a,
        interval.b,
        power,
        detectable(seeds, images),
        seeds,
        images,
        seeds_for,
        images_for,
        known,
    )
