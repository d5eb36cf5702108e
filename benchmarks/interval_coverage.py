"""Do a study's 95 % intervals hold 95 %? The study's method beside the one it replaced, in simulated studies.

Each simulated study has the four arms (text, shuffled, random, continued) x S seeds and a fixed
baseline, scored on N images (``defectfusion.engine.study.calibration``: per-image scores with shared
difficulty, arm-by-image gains, seed luck on the whole set and seed luck image by image). With no
true difference, an interval of ``text − random`` that excludes 0 is a false alarm; the rate should
be 5 %. Three intervals side by side on the same simulated studies:

- ``study``: what ``defectfusion study`` reports (seed variance pooled over the trained arms, the
  larger of pool and own per arm; shared image covariance; Satterthwaite t);
- ``hierarchical``: the percentile bootstrap the study used before (per image draw, each arm's
  seeds resampled with replacement and averaged);
- ``images only``: the study's interval with its seed part removed (the control that shows what
  the seed level is for).

Noise settings: ``demo`` (the defaults of ``calibration.Noise``), ``seed-heavy``, ``image-heavy``,
``seed x image`` (a seed's luck varies image by image only), and ``unequal`` (the text arm's seed
noise twice the others': what pooling assumes away).

Usage:  python benchmarks/interval_coverage.py [--replicates 1000] [--draws 200]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np

from defectfusion.engine.study.calibration import Noise, coverage, study_interval
from defectfusion.engine.study.intervals import ArmValues, Interval

SETTINGS = {
    "demo": (Noise(), None),
    "seed-heavy": (Noise(seed=0.01, arm_image=0.02, seed_image=0.03), None),
    "image-heavy": (Noise(seed=0.001, arm_image=0.05, seed_image=0.02), None),
    "seed x image": (Noise(seed=0.0, arm_image=0.0, seed_image=0.08), None),
    "unequal": (Noise(), {"text": 2.0}),
}


def images_only(arms, a, b, images) -> Interval:
    iv = study_interval(arms, a, b, images)
    half = 1.96 * math.sqrt(iv.image_variance)
    return replace(iv, low=iv.observed - half, high=iv.observed + half)


def hierarchical(arms: dict[str, ArmValues], a: str, b: str, images: int, seed: int = 0) -> Interval:
    """The replaced method: per draw, resample each arm's seeds, average, take percentiles of a − b."""
    rng = np.random.default_rng(seed)

    def means(arm: ArmValues) -> np.ndarray:
        s, d = arm.draws.shape
        chosen = rng.integers(0, s, size=(d, s))
        return arm.draws[chosen, np.arange(d)[:, None]].mean(axis=1)

    diff = means(arms[a]) - means(arms[b])
    low, high = np.percentile(diff, [2.5, 97.5])
    observed = float(arms[a].observed.mean() - arms[b].observed.mean())
    return Interval(a, b, observed, float(low), float(high), 0.95, len(diff))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    methods = {"study": study_interval, "hierarchical": hierarchical, "images only": images_only}
    print(f"false alarms of text − random with no true difference, {args.replicates} simulated studies each")
    print(f"{'noise':14s} {'S':>2s} " + " ".join(f"{m:>14s}" for m in methods) + "   study coverage at +0.02")
    start = time.perf_counter()
    for name, (noise, scale) in SETTINGS.items():
        for seeds in (2, 3, 5):
            cells = []
            for k, fn in enumerate(methods.values()):
                c = coverage(
                    noise,
                    seeds,
                    0.0,
                    replicates=args.replicates,
                    draws=args.draws,
                    interval=fn,
                    seed_scale=scale,
                    seed=1000 * seeds + k,
                )
                cells.append(f"{c.excluded_zero:14.3f}")
            real = coverage(
                noise,
                seeds,
                0.02,
                against="baseline",
                replicates=args.replicates,
                draws=args.draws,
                seed_scale=scale,
                seed=seeds,
            )
            print(f"{name:14s} {seeds:2d} " + " ".join(cells) + f"   {real.covered:.3f}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
