"""Pointing game and AUROC: known answers on hand-made maps, masking of borders and padding, intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectfusion.engine.explain.map_quality import (
    auroc,
    explanation_pairs,
    pair_quality,
    summarize_quality,
    valid_area,
)

BOX = np.array([[20.0, 30.0, 40.0, 50.0]])  # x1, y1, x2, y2


def _map_with_peak(x: int, y: int, size=(80, 100)) -> torch.Tensor:
    m = torch.zeros(size)
    m[y, x] = 1.0
    return m


def test_auroc_matches_its_definition_with_ties_counted_half():
    pos, neg = np.array([3.0, 2.0, 2.0]), np.array([1.0, 2.0])
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert auroc(pos, neg) == pytest.approx(float(np.mean(pairs)))
    assert auroc(np.array([1.0]), np.array([0.0])) == 1.0 and auroc(np.array([0.0]), np.array([1.0])) == 0.0
    assert auroc(np.array([]), neg) is None


def test_a_peak_inside_the_box_or_within_the_tolerance_hits_and_outside_misses():
    valid = valid_area((80, 100), border=0)
    inside = pair_quality(1, 0, _map_with_peak(30, 40), BOX, BOX, valid, tolerance=15)
    near = pair_quality(1, 0, _map_with_peak(50, 40), BOX, BOX, valid, tolerance=15)  # 10 px right of the box
    far = pair_quality(1, 0, _map_with_peak(80, 10), BOX, BOX, valid, tolerance=15)
    assert inside.hit and near.hit and not far.hit
    strict = pair_quality(1, 0, _map_with_peak(50, 40), BOX, BOX, valid, tolerance=0)
    assert not strict.hit
    # chance: the share of the image covered by the box grown by 15 px (50 x 50 of 100 x 80)
    assert inside.chance == pytest.approx(50 * 50 / (100 * 80), abs=0.02)


def test_a_constant_map_points_nowhere_and_has_auroc_one_half():
    q = pair_quality(1, 0, torch.ones(80, 100), BOX, BOX, valid_area((80, 100), border=0))
    assert not q.hit and q.auroc == pytest.approx(0.5)


def test_auroc_is_one_for_a_map_that_is_high_exactly_on_the_box_and_low_when_inverted():
    m = torch.zeros(80, 100)
    m[30:50, 20:40] = 1.0
    valid = valid_area((80, 100), border=0)
    assert pair_quality(1, 0, m, BOX, BOX, valid).auroc == pytest.approx(1.0)
    assert pair_quality(1, 0, 1.0 - m, BOX, BOX, valid).auroc == pytest.approx(0.0)


def test_border_and_padding_are_left_out():
    m = _map_with_peak(1, 1)  # a peak in the corner, outside the box
    m[40, 30] = 0.5  # a lower one on the box
    assert not pair_quality(1, 0, m, BOX, BOX, valid_area((80, 100), border=0)).hit
    assert pair_quality(1, 0, m, BOX, BOX, valid_area((80, 100), border=2)).hit  # the corner no longer counts
    padding = torch.zeros(80, 100, dtype=torch.bool)
    padding[:, :10] = True  # a letterbox band on the left
    assert pair_quality(1, 0, m, BOX, BOX, valid_area((80, 100), border=0, padding=padding)).hit


def test_pairs_per_class_present_and_summary_with_intervals():
    maps = torch.zeros(3, 80, 100)
    maps[0, 40, 30] = 1.0  # class 0 points at its box
    maps[2, 5, 90] = 1.0  # class 2 points away from its box
    boxes = np.array([[20.0, 30.0, 40.0, 50.0], [60.0, 40.0, 80.0, 60.0]])
    labels = np.array([0, 2])
    pairs = explanation_pairs({"k": maps}, 7, boxes, labels, border=0)["k"]
    assert [(p.label, p.hit) for p in pairs] == [(0, True), (2, False)]
    many = [p for i in range(10) for p in explanation_pairs({"k": maps}, i, boxes, labels, border=0)["k"]]
    summary = summarize_quality("k", many, ["a", "b", "c"], draws=200)
    assert summary.overall["pointing_game"] == 0.5 and summary.overall["pairs"] == 20
    assert summary.per_class["a"]["pointing_game"] == 1.0 and summary.per_class["c"]["pointing_game"] == 0.0
    assert "b" not in summary.per_class  # absent from every image: no pair
    low, high = summary.overall["pointing_game_interval"]
    assert low == high == 0.5  # every image is alike, so resampling them cannot move the mean
