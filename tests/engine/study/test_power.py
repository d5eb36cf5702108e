"""What a study can see: the smallest difference it finds four times in five, and what more would take."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from defectfusion.engine.study.intervals import Interval, pooled_seed_noise
from defectfusion.engine.study.power import power_of
from tests.engine.study.helpers import arm


def test_power_is_the_two_t_quantiles_times_the_standard_error_and_more_seeds_or_images_help():
    iv = Interval(
        "text",
        "random",
        0.01,
        -0.02,
        0.04,
        0.95,
        2000,
        seed_variance=4e-5,
        image_variance=1e-5,
        seeds=(3, 3),
        images=160,
    )
    noise = pooled_seed_noise([arm(n, [0.5, 0.51, 0.49], np.zeros((3, 4))) for n in ("a", "b", "c", "d")])
    power = power_of(iv, noise, targets=(0.01, 0.035))
    total = 4e-5 + 1e-5
    df = total**2 / ((4e-5) ** 2 / noise.df + (1e-5) ** 2 / 159)
    assert power.detectable == pytest.approx((stats.t.ppf(0.975, df) + stats.t.ppf(0.8, df)) * math.sqrt(total))
    assert power.detectable > 0.01
    assert power.seeds_for[0.035] is not None and power.seeds_for[0.035] <= 3 < power.seeds_for[0.01]
    assert power.images_for[0.035] <= 160
    # with seeds alone the image part stays: a small enough target is out of reach by seeds
    tiny = power_of(iv, noise, targets=(0.001,))
    assert tiny.seeds_for[0.001] is None
