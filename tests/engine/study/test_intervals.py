"""Intervals of a difference of two arms over training seeds and test images; Holm's adjustment."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from defectfusion.engine.study.intervals import compare, holm, pooled_seed_noise
from tests.engine.study.helpers import arm


def test_the_interval_adds_pooled_seed_variance_and_the_image_covariance_shared_by_seeds():
    rng = np.random.default_rng(0)
    shared_a, shared_b = rng.normal(0, 0.02, 300), rng.normal(0, 0.02, 300)
    a = arm("text", [0.61, 0.59, 0.62], [0.61 + shared_a + rng.normal(0, 0.01, 300) for _ in range(3)])
    b = arm("random", [0.60, 0.60, 0.57], [0.59 + shared_b + rng.normal(0, 0.01, 300) for _ in range(3)])
    c = arm("continued", [0.55, 0.56, 0.57], [0.56 + rng.normal(0, 0.02, 300) for _ in range(3)])
    noise = pooled_seed_noise([a, b, c])
    # pooled by hand: sums of squares over the three arms, 2 df each
    squares = sum(((np.array(x.observed) - np.mean(x.observed)) ** 2).sum() for x in (a, b, c))
    assert noise.variance == pytest.approx(squares / 6) and noise.df == 6
    iv = compare(a, b, noise, images=160)
    seed_part = (
        max(noise.variance, np.var(a.observed, ddof=1)) / 3 + max(noise.variance, np.var(b.observed, ddof=1)) / 3
    )
    assert iv.seed_variance == pytest.approx(seed_part)
    # image part by hand: covariances of different runs' draws, within and across arms
    cov = np.cov(np.vstack([a.draws, b.draws]))
    within_a = np.mean([cov[i, j] for i in range(3) for j in range(3) if i != j])
    within_b = np.mean([cov[i, j] for i in range(3, 6) for j in range(3, 6) if i != j])
    across = np.mean([cov[i, j] for i in range(3) for j in range(3, 6)])
    assert iv.image_variance == pytest.approx(within_a + within_b - 2 * across)
    total = iv.seed_variance + iv.image_variance
    df = total**2 / (iv.seed_variance**2 / 6 + iv.image_variance**2 / 159)
    half = stats.t.ppf(0.975, df) * math.sqrt(total)
    assert iv.observed == pytest.approx(np.mean(a.observed) - np.mean(b.observed))
    assert (iv.low, iv.high) == pytest.approx((iv.observed - half, iv.observed + half))
    assert iv.p_value == pytest.approx(2 * stats.t.sf(abs(iv.observed) / math.sqrt(total), df))


def test_an_arm_noisier_than_the_pool_keeps_its_own_seed_variance():
    flat = np.zeros((3, 50))
    quiet = [arm(n, [0.5, 0.5001, 0.4999], flat) for n in ("random", "continued", "shuffled")]
    noisy = arm("text", [0.40, 0.60, 0.50], flat)
    noise = pooled_seed_noise([noisy, *quiet])
    iv = compare(noisy, quiet[0], noise)
    assert iv.seed_variance == pytest.approx(np.var([0.4, 0.6, 0.5], ddof=1) / 3 + noise.variance / 3)


def test_one_seed_leaves_the_seed_variance_unknown_and_says_so():
    rng = np.random.default_rng(1)
    a = arm("text", [0.6], [0.6 + rng.normal(0, 0.01, 200)])
    base = arm("baseline", [0.55], [0.55 + rng.normal(0, 0.01, 200)], fixed=True)
    assert pooled_seed_noise([a]) is None
    iv = compare(a, base, None)
    assert iv.seed_variance is None
    assert iv.image_variance == pytest.approx(np.var(a.draws[0] - base.draws[0], ddof=1))


def test_undefined_values_give_an_undefined_interval_and_undefined_draws_are_left_out():
    draws = np.linspace(0.4, 0.6, 20)
    a = arm("text", [float("nan")], [draws])
    b = arm("baseline", [0.5], [draws], fixed=True)
    assert not compare(a, b, None).defined
    holes = draws.copy()
    holes[:5] = np.nan
    iv = compare(arm("text", [0.5], [holes]), b, None)
    assert iv.draws == 15 and iv.defined


def test_holm_adjusts_step_down_and_keeps_undefined():
    assert holm([0.01, 0.04, 0.03, 0.005, float("nan")])[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm([0.01, float("nan")])[1])
