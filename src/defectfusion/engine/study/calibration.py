"""Do the study's intervals keep their level? Simulated studies with a known difference.

Each simulated run scores every test image: ``y[a, s, i] = mu_a + image_i + arm_image[a, i] +
seed[a, s] + seed_image[a, s, i]``, the four noise terms normal with the sds of :class:`Noise`. A
run's metric is its mean over the images, and the image bootstrap reweights the same images for
every run (paired), exactly as a study scores its runs. Over many simulated studies, the share of
intervals that hold the true difference ``mu_a - mu_b`` is the coverage, and the share that exclude
0 when the arms are equal is the false-alarm rate. ``benchmarks/interval_coverage.py`` prints them;
``tests/engine/study/test_calibration.py`` holds them to their bands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .intervals import ArmValues, Interval, compare, pooled_seed_noise


@dataclass(frozen=True)
class Noise:
    """Sizes of the noise terms of a simulated study (in metric units, e.g. mAP@0.5)."""

    images: int = 160
    image: float = 0.25  # difficulty shared by every arm (cancels in paired differences)
    arm_image: float = 0.03  # how an arm's gain varies from image to image (the same for all its seeds)
    seed: float = 0.005  # a training seed's luck on the whole set
    seed_image: float = 0.05  # a seed's luck image by image


@dataclass(frozen=True)
class Coverage:
    """What the simulated studies showed for one comparison."""

    replicates: int
    covered: float  # share of intervals holding the true difference
    excluded_zero: float  # share of intervals excluding 0
    mean_half_width: float


STUDY_ARMS = ("text", "shuffled", "random", "continued")
IntervalFn = Callable[[Mapping[str, ArmValues], str, str, int], Interval]


def study_interval(arms: Mapping[str, ArmValues], a: str, b: str, images: int) -> Interval:
    """The interval a study reports: :func:`.intervals.compare` with the seed noise pooled over its arms."""
    noise = pooled_seed_noise([v for v in arms.values() if not v.fixed])
    return compare(arms[a], arms[b], noise, images=images)


def bootstrap_weights(rng: np.random.Generator, images: int, draws: int) -> np.ndarray:
    """``[D, N]`` how often each image appears in each resample (paired: the same for every run)."""
    picks = rng.integers(0, images, size=(draws, images)) + images * np.arange(draws)[:, None]
    return np.bincount(picks.ravel(), minlength=draws * images).reshape(draws, images).astype(np.float64)


def simulate_arms(
    rng: np.random.Generator,
    noise: Noise,
    means: Mapping[str, float],
    seeds: int,
    draws: int,
    fixed: Sequence[str] = ("baseline",),
    seed_scale: Mapping[str, float] | None = None,
) -> dict[str, ArmValues]:
    """One simulated study: per arm its runs' values on all images and on every image draw.

    An arm in ``fixed`` is one given model (the baseline): one run, no seed terms. ``seed_scale``:
    per arm, a multiplier of both seed terms (an arm whose training is noisier than the others').
    """
    n = noise.images
    shared = rng.normal(0.0, noise.image, n)
    weights = bootstrap_weights(rng, n, draws) / n
    arms = {}
    for name, mean in means.items():
        is_fixed = name in fixed
        count = 1 if is_fixed else seeds
        per_image = mean + shared + rng.normal(0.0, noise.arm_image, n)
        runs = np.tile(per_image, (count, 1))
        if not is_fixed:
            scale = (seed_scale or {}).get(name, 1.0)
            runs += scale * (rng.normal(0.0, noise.seed, (count, 1)) + rng.normal(0.0, noise.seed_image, (count, n)))
        arms[name] = ArmValues(name, runs.mean(axis=1), runs @ weights.T, is_fixed)
    return arms


def _study_means(difference: float) -> dict[str, float]:
    means = dict.fromkeys((*STUDY_ARMS, "baseline"), 0.0)
    means["text"] = difference
    return means


def coverage(
    noise: Noise,
    seeds: int,
    difference: float = 0.0,
    *,
    against: str = "random",
    replicates: int = 1000,
    draws: int = 200,
    interval: IntervalFn = study_interval,
    seed_scale: Mapping[str, float] | None = None,
    seed: int = 0,
) -> Coverage:
    """Coverage and false-alarm rate of ``text − against`` in simulated four-arm studies with a baseline.

    ``difference``: the true ``text − against`` (every other arm and the baseline have the same mean).
    """
    rng = np.random.default_rng(seed)
    covered = excluded = 0
    widths = []
    for _ in range(replicates):
        arms = simulate_arms(rng, noise, _study_means(difference), seeds, draws, seed_scale=seed_scale)
        iv = interval(arms, "text", against, noise.images)
        covered += iv.low <= difference <= iv.high
        excluded += iv.excludes_zero
        widths.append(iv.half_width)
    return Coverage(replicates, covered / replicates, excluded / replicates, float(np.mean(widths)))


def rule_outcomes(
    noise: Noise,
    seeds: int,
    means: Mapping[str, float],
    *,
    replicates: int = 1000,
    draws: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """How often the study's rule says each outcome in simulated studies with these true ``means``."""
    from .verdict import decide

    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for _ in range(replicates):
        arms = simulate_arms(rng, noise, means, seeds, draws)
        primary = [study_interval(arms, "text", b, noise.images) for b in ("baseline", *STUDY_ARMS[1:]) if b in arms]
        outcome = decide(primary).outcome
        counts[outcome] = counts.get(outcome, 0) + 1
    return {k: v / replicates for k, v in counts.items()}
