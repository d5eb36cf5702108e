"""Pure detection-metric functions on numpy arrays (no COCO objects, no torch).

Boxes here are ``[N, 4]`` float64 ``x1, y1, x2, y2`` in pixels; labels are contiguous class
indices ``0 .. C-1``. The evaluator (:mod:`defectfusion.engine.evaluation.evaluator`) gathers per-image
arrays and calls these; they are kept apart so that each can be tested by hand.

Conventions shared with COCOeval: IoU has no "+1" pixel term, a crowd box is compared by
intersection over the *prediction's* area, and a prediction that matches nothing but lies on a
crowd region is ignored (neither true nor false positive).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, 4]`` x ``[B, 4]`` xyxy -> ``[A, B]`` intersection areas."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    return wh[..., 0] * wh[..., 1]


def _area(a: np.ndarray) -> np.ndarray:
    return np.clip(a[:, 2] - a[:, 0], 0.0, None) * np.clip(a[:, 3] - a[:, 1], 0.0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, 4]`` x ``[B, 4]`` xyxy -> ``[A, B]`` IoU (0 where the union is empty)."""
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, 4]`` x ``[B, 4]`` -> ``[A, B]`` intersection over the area of ``a`` (COCO's crowd IoU)."""
    inter = _intersection(a, b)
    area = _area(a)[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def on_crowd(pred_boxes: np.ndarray, crowd_boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``[D]`` bool: the prediction lies on some crowd region (IoA >= threshold)."""
    if len(pred_boxes) == 0 or len(crowd_boxes) == 0:
        return np.zeros(len(pred_boxes), dtype=bool)
    return (box_ioa(pred_boxes, crowd_boxes) >= iou_threshold).any(axis=1)


def match_by_score(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    gt_boxes: np.ndarray,
    crowd_boxes: np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """Greedy matching of one class in one image, predictions in descending score order.

    Each prediction takes the unmatched ground-truth box with the highest IoU >= threshold
    (COCOeval's rule at a single IoU). Returns ``[D]`` int8: 1 true positive, 0 false positive,
    -1 ignored (unmatched but on a crowd region), aligned with the *input* order.
    """
    out = np.zeros(len(pred_boxes), dtype=np.int8)
    if len(pred_boxes) == 0:
        return out
    order = np.argsort(-pred_scores, kind="stable")
    if len(gt_boxes):
        iou = box_iou(pred_boxes, gt_boxes)
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for d in order:
            cand = np.where(taken, -1.0, iou[d])
            g = int(np.argmax(cand))
            if cand[g] >= iou_threshold:
                taken[g] = True
                out[d] = 1
    crowd = on_crowd(pred_boxes, crowd_boxes, iou_threshold)
    out[(out == 0) & crowd] = -1
    return out


@dataclass
class BestF1:
    """Operating point of one class at the confidence that maximises F1 (``None`` = undefined)."""

    precision: float | None
    recall: float | None
    f1: float | None
    conf: float | None


def best_f1(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> BestF1:
    """Precision, recall and F1 of one class at the best-F1 confidence threshold.

    Args:
        scores: ``[D]`` scores of the class's (non-ignored) predictions over all images.
        is_tp: ``[D]`` bool, whether each prediction matched a ground-truth box.
        num_gt: non-crowd ground-truth boxes of the class.

    The candidate thresholds are the distinct prediction scores (keep ``score >= conf``), so the
    curve is exact rather than sampled on a grid. F1 is ``2TP / (2TP + FP + FN)``, which equals
    the harmonic mean of P and R where both exist and is 0 when TP = 0. Among thresholds with the
    same F1 the highest confidence wins (the strictest operating point). Undefined cases:
    no predictions -> precision and conf ``None``, recall 0, F1 0 (``None`` if also no GT);
    no ground truth -> recall and conf ``None``, precision and F1 0 over all predictions.
    """
    n = len(scores)
    if n == 0:
        return BestF1(None, 0.0 if num_gt else None, 0.0 if num_gt else None, None)
    if num_gt == 0:
        # Every prediction is a false positive: no threshold is better than another.
        return BestF1(0.0, None, 0.0, None)
    order = np.argsort(-scores, kind="stable")
    s, tp = scores[order], np.cumsum(is_tp[order].astype(np.float64))
    # A threshold keeps every prediction with the same score, so evaluate only at the last
    # index of each run of equal scores.
    last = np.r_[np.nonzero(s[1:] != s[:-1])[0], n - 1]
    ctp, kept = tp[last], last + 1.0
    f1 = 2.0 * ctp / (kept + num_gt)
    i = int(np.argmax(f1))  # first maximum = highest confidence
    return BestF1(float(ctp[i] / kept[i]), float(ctp[i] / num_gt), float(f1[i]), float(s[last[i]]))


def confusion_image(
    counts: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    crowd_boxes: np.ndarray,
    pred_boxes: np.ndarray,
    pred_labels: np.ndarray,
    iou_threshold: float,
) -> None:
    """Add one image to a ``[C+1, C+1]`` confusion matrix in place.

    Rows are ground truth, columns predictions; index ``C`` is background. Predictions must
    already be filtered by confidence. Matching is class-agnostic and one-to-one, highest IoU
    first, so a crack predicted as a scratch counts in ``[crack, scratch]``. Unmatched ground
    truth -> ``[gt, C]`` (missed); unmatched predictions -> ``[C, pred]`` (false positive),
    unless they lie on a crowd region, in which case they are not counted at all.
    """
    bg = counts.shape[0] - 1
    matched_g = np.zeros(len(gt_boxes), dtype=bool)
    matched_d = np.zeros(len(pred_boxes), dtype=bool)
    if len(gt_boxes) and len(pred_boxes):
        iou = box_iou(gt_boxes, pred_boxes)
        gi, di = np.nonzero(iou >= iou_threshold)
        for k in np.argsort(-iou[gi, di], kind="stable"):
            g, d = gi[k], di[k]
            if not matched_g[g] and not matched_d[d]:
                matched_g[g] = matched_d[d] = True
                counts[gt_labels[g], pred_labels[d]] += 1
    np.add.at(counts, (gt_labels[~matched_g], bg), 1)
    fp = ~matched_d & ~on_crowd(pred_boxes, crowd_boxes, iou_threshold)
    np.add.at(counts, (bg, pred_labels[fp]), 1)


def row_normalize(counts: np.ndarray) -> list[list[float | None]]:
    """Row-normalised matrix as nested lists; a row with zero total is all ``None``."""
    totals = counts.sum(axis=1)
    return [
        [float(v) / float(t) for v in row] if t > 0 else [None] * len(row)
        for row, t in zip(counts.tolist(), totals.tolist(), strict=True)
    ]


def coco_class_stats(
    precision: np.ndarray, iou_thrs: np.ndarray, k: int
) -> tuple[float | None, float | None, list[float | None]]:
    """AP@0.5, AP@0.5:0.95 and the IoU=0.5 PR curve of class ``k`` from COCOeval's array.

    ``precision`` is ``eval["precision"]`` of shape ``[T, R, K, A, M]`` (IoU thresholds, 101
    recall points, classes, area ranges, max-detection settings); -1 marks "no ground truth".
    Like COCOeval's summary we take area "all" (A=0) and the last maxDets (100) and average the
    entries > -1; with none the AP is ``None`` rather than COCO's -1 or a NaN.
    """
    p = precision[:, :, k, 0, -1]  # [T, R]
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))

    def mean(x: np.ndarray) -> float | None:
        valid = x[x > -1]
        return float(valid.mean()) if valid.size else None

    curve = [float(v) if v > -1 else None for v in p[t50].tolist()]
    return mean(p[t50]), mean(p), curve


def mean_or_none(values: list[float | None]) -> float | None:
    """Mean of the defined values; ``None`` when there are none."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None
