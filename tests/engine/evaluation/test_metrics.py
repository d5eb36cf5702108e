"""Pure metric functions, checked on cases small enough to compute by hand."""

from __future__ import annotations

import numpy as np
import pytest

from defectfusion.engine.evaluation.metrics import (
    best_f1,
    box_ioa,
    box_iou,
    coco_class_stats,
    confusion_image,
    match_by_score,
    row_normalize,
)


def _b(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def test_iou_and_ioa() -> None:
    a, b = _b([0, 0, 10, 10]), _b([5, 0, 15, 10], [20, 20, 20, 20])
    assert box_iou(a, b) == pytest.approx(np.array([[50 / 150, 0.0]]))
    assert box_ioa(a, b)[0, 0] == pytest.approx(0.5)  # over the area of a only
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 2)


def test_match_by_score_prefers_high_scores_and_ignores_crowd() -> None:
    gt = _b([0, 0, 10, 10])
    crowd = _b([100, 100, 200, 200])
    preds = _b([0, 0, 10, 9], [0, 0, 10, 10], [120, 120, 130, 130], [50, 50, 60, 60])
    scores = np.array([0.9, 0.5, 0.8, 0.7])
    # The 0.9 box takes the GT although the 0.5 box overlaps it better: score order first.
    assert match_by_score(preds, scores, gt, crowd, 0.5).tolist() == [1, 0, -1, 0]


def test_best_f1_hand_computed() -> None:
    # 4 GT; by score: TP FP TP TP FP. F1 = 2TP / (kept + 4): .4 .333 .571 .75 .667 -> conf .6
    scores = np.array([0.5, 0.9, 0.7, 0.8, 0.6])
    tp = np.array([False, True, True, False, True])
    op = best_f1(scores, tp, num_gt=4)
    assert (op.precision, op.recall, op.f1, op.conf) == pytest.approx((0.75, 0.75, 0.75, 0.6))


def test_best_f1_equal_scores_form_one_threshold() -> None:
    op = best_f1(np.array([0.5, 0.5]), np.array([False, True]), num_gt=1)
    assert (op.precision, op.recall, op.f1, op.conf) == pytest.approx((0.5, 1.0, 2 / 3, 0.5))


def test_best_f1_ties_take_highest_conf_and_undefined_cases() -> None:
    op = best_f1(np.array([0.9, 0.3]), np.array([False, False]), num_gt=2)
    assert (op.precision, op.recall, op.f1, op.conf) == (0.0, 0.0, 0.0, 0.9)
    assert best_f1(np.zeros(0), np.zeros(0, bool), num_gt=3).__dict__ == {
        "precision": None, "recall": 0.0, "f1": 0.0, "conf": None}  # fmt: skip
    assert best_f1(np.array([0.4]), np.array([False]), num_gt=0).__dict__ == {
        "precision": 0.0, "recall": None, "f1": 0.0, "conf": None}  # fmt: skip
    assert set(best_f1(np.zeros(0), np.zeros(0, bool), num_gt=0).__dict__.values()) == {None}


def test_confusion_image_highest_iou_first_one_to_one() -> None:
    counts = np.zeros((3, 3), dtype=np.int64)  # classes 0, 1 + background
    gt, gt_lab = _b([0, 0, 10, 10], [50, 50, 60, 60]), np.array([0, 1])
    preds = _b([0, 0, 10, 10], [0, 0, 10, 9], [80, 80, 90, 90], [101, 101, 109, 109])
    pred_lab = np.array([1, 0, 0, 1])
    confusion_image(counts, gt, gt_lab, _b([100, 100, 110, 110]), preds, pred_lab, 0.5)
    # GT 0 goes to the IoU-1 box (class 1: confusion); the IoU-.9 duplicate is a false positive;
    # GT 1 is missed; the far box is a false positive; the box on the crowd region is ignored.
    assert counts.tolist() == [[0, 1, 0], [0, 0, 1], [2, 0, 0]]


def test_row_normalize_null_rows() -> None:
    assert row_normalize(np.array([[1, 3], [0, 0]])) == [[0.25, 0.75], [None, None]]


def test_coco_class_stats_reads_area_all_maxdets_last() -> None:
    p = -np.ones((10, 101, 2, 4, 3))
    p[:, :, 0, 0, -1] = 0.5
    p[0, :, 0, 0, -1] = 1.0
    p[:, :, 0, 0, 0] = 0.0  # maxDets=1 slice must not be used
    ap50, ap, curve = coco_class_stats(p, np.linspace(0.5, 0.95, 10), 0)
    assert (ap50, ap) == pytest.approx((1.0, 0.55)) and curve == [1.0] * 101
    assert coco_class_stats(p, np.linspace(0.5, 0.95, 10), 1) == (None, None, [None] * 101)
