"""COCO's matching of one model's detections, done once: per image and class, at every IoU threshold.

pycocotools' ``evaluateImg`` rules, batched with numpy (:func:`match_pairs`): at most
:data:`MAX_DETECTIONS` detections per image *and class* by score (stable); greedy matching at each of
:data:`IOU_THRESHOLDS`, each detection taking the best unmatched non-ignored ground truth with IoU >= t
(the last of equal IoUs), else the best ignored one (crowd regions stay available and are compared by
intersection over the detection's area); ground truth that is crowd or outside :data:`AREA_ALL` is
ignored, and so is an unmatched detection outside it. Matching depends on the image and the class
only, never on which other images are scored with it: what makes :mod:`.bootstrap` exact and fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...structures import Detections
from .evaluator import DetectionEvaluator

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)  # COCO's iouThrs
MAX_DETECTIONS = 100  # per image and class
AREA_ALL = (0.0, 1e10)  # COCO's area range "all"
_BLOCK = 1 << 22  # float64 elements per batch of pairs (32 MiB)


@dataclass
class PairGT:
    """The ground truth of one image and class, in the dataset's order (COCO's among equal IoUs).

    Attributes:
        boxes: ``[G, 4]`` float64 ``x, y, w, h``.
        ignore: ``[G]`` crowd, or area outside :data:`AREA_ALL`.
        crowd: ``[G]`` crowd regions (matched by intersection over the detection's area, reusable).
    """

    boxes: np.ndarray
    ignore: np.ndarray
    crowd: np.ndarray


@dataclass
class GroundTruth:
    """The evaluator's ground truth, images in id order (``N``), contiguous labels (``C``).

    Attributes:
        pairs: ``(image index, label)`` -> :class:`PairGT` (absent: no ground truth there).
        counts: ``[N, C]`` float64 non-ignored ground truth per image and class (COCO's ``npig``).
    """

    image_ids: list[int]
    pairs: dict[tuple[int, int], PairGT]
    counts: np.ndarray


def ground_truth(ev: DetectionEvaluator) -> GroundTruth:
    image_ids = sorted(ev.image_ids)
    row = {image_id: n for n, image_id in enumerate(image_ids)}
    label_of = {cid: k for k, cid in enumerate(ev.cat_ids)}
    grouped: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for ann in ev.dataset["annotations"]:  # dataset order, as COCO lists an image's annotations
        grouped.setdefault((row[ann["image_id"]], label_of[ann["category_id"]]), []).append(ann)
    pairs, counts = {}, np.zeros((len(image_ids), len(ev.cat_ids)))
    for key, anns in grouped.items():
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64)
        crowd = np.array([a["iscrowd"] == 1 for a in anns])
        area = np.array([a["area"] for a in anns], dtype=np.float64)
        ignore = crowd | (area < AREA_ALL[0]) | (area > AREA_ALL[1])
        pairs[key] = PairGT(boxes, ignore, crowd)
        counts[key] = np.count_nonzero(~ignore)
    return GroundTruth(image_ids, pairs, counts)


def coco_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """``[D, 4]`` x ``[G, 4]`` ``x, y, w, h`` -> ``[D, G]`` IoU, pycocotools' ``bbIou`` to the bit
    (a crowd box: intersection over the detection's area)."""
    w = np.minimum(dt[:, None, 0] + dt[:, None, 2], gt[None, :, 0] + gt[None, :, 2])
    w = w - np.maximum(dt[:, None, 0], gt[None, :, 0])
    h = np.minimum(dt[:, None, 1] + dt[:, None, 3], gt[None, :, 1] + gt[None, :, 3])
    h = h - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = w * h
    dt_area, gt_area = (dt[:, 2] * dt[:, 3])[:, None], (gt[:, 2] * gt[:, 3])[None, :]
    union = np.where(crowd[None, :], dt_area, dt_area + gt_area - inter)
    overlap = (w > 0) & (h > 0)
    return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _last_best(values: np.ndarray) -> np.ndarray:
    """``[..., G]`` -> ``[...]`` index of the *last* maximum (COCO replaces on ``>=``), -1 if all -inf."""
    last = values.shape[-1] - 1 - np.argmax(values[..., ::-1], axis=-1)
    return np.where(np.isfinite(values.max(axis=-1)), last, -1)


def _greedy_match(ious: np.ndarray, ignore: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """COCO's greedy matching at every IoU threshold, for a batch of ``P`` (image, class) pairs.

    Args:
        ious: ``[P, D, G]`` detections in score order, ground truth in the dataset's; padding -1.
        ignore, crowd: ``[P, G]`` bool.

    Returns:
        ``[P, T, D]`` int8: 1 matched a non-ignored ground truth, -1 an ignored one, 0 unmatched.
        Each detection takes the best unmatched non-ignored ground truth with IoU >= t, else the
        best ignored one (a crowd region stays available), the last of equal IoUs: pycocotools'
        ``evaluateImg`` (which sorts ignored ground truth last and stops there once it has a match).
    """
    P, D, G = ious.shape
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None]  # [1, T, 1], as COCO clips them
    reusable = crowd[:, None, :]
    taken = np.zeros((P, len(IOU_THRESHOLDS), G), dtype=bool)
    out = np.zeros((P, len(IOU_THRESHOLDS), D), dtype=np.int8)
    for d in range(D):
        iou = np.broadcast_to(ious[:, d, None, :], taken.shape)
        free = (iou >= thresholds) & (~taken | reusable)
        plain = _last_best(np.where(free & ~ignore[:, None, :], iou, -np.inf))  # [P, T]
        ignored = _last_best(np.where(free & ignore[:, None, :], iou, -np.inf))
        pick = np.where(plain >= 0, plain, ignored)
        out[:, :, d] = np.where(plain >= 0, 1, np.where(ignored >= 0, -1, 0))
        p, t = np.nonzero(pick >= 0)
        taken[p, t, pick[p, t]] = True
    return out


@dataclass
class Pair:
    """One image and class of one model: its kept detections (score order) and their status."""

    image: int
    label: int
    scores: np.ndarray  # [D]
    status: np.ndarray  # [T, D] int8: 1 true positive, 0 false positive, -1 ignored
    ious: np.ndarray  # [D', G] the rows of detections that overlap some ground truth by >= 0.5
    rows: np.ndarray  # [D'] their indices among the D detections
    gt: PairGT | None


def image_class_pairs(gt: GroundTruth, detections: Mapping[int, Detections]) -> list[Pair]:
    """Every (image, class) with detections: at most 100 by score (stable), IoU with the ground truth."""
    pairs = []
    for n, image_id in enumerate(gt.image_ids):
        det = detections.get(image_id)
        if det is None or len(det) == 0:
            continue
        xyxy = det.boxes.detach().double().cpu().numpy().reshape(-1, 4)
        boxes = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)  # as a COCO results file
        scores = det.scores.detach().double().cpu().numpy().reshape(-1)
        labels = det.labels.detach().cpu().numpy().reshape(-1)  # checked by the evaluator
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            idx = idx[np.argsort(-scores[idx], kind="stable")][:MAX_DETECTIONS]
            area = boxes[idx, 2] * boxes[idx, 3]
            status = np.zeros((len(IOU_THRESHOLDS), len(idx)), dtype=np.int8)
            status[:, (area < AREA_ALL[0]) | (area > AREA_ALL[1])] = -1  # unless matched below
            pair_gt = gt.pairs.get((n, int(c)))
            ious, rows = np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
            if pair_gt is not None:
                ious = coco_iou(boxes[idx], pair_gt.boxes, pair_gt.crowd)
                rows = np.flatnonzero((ious >= IOU_THRESHOLDS[0]).any(axis=1))
                ious = ious[rows]
            pairs.append(Pair(n, int(c), scores[idx], status, ious, rows, pair_gt))
    return pairs


def match_pairs(pairs: Sequence[Pair]) -> None:
    """Fill in every pair's status by COCO's greedy matching, pairs batched by size."""
    todo = sorted((p for p in pairs if len(p.rows)), key=lambda p: (p.ious.shape[1], len(p.rows)))
    start = 0
    while start < len(todo):
        G = todo[start].ious.shape[1]
        end = start + 1
        while end < len(todo) and todo[end].ious.shape[1] == G and (end - start) * len(todo[end].rows) * G < _BLOCK:
            end += 1
        batch = todo[start:end]
        D = max(len(p.rows) for p in batch)
        ious = np.full((len(batch), D, G), -1.0)
        for i, p in enumerate(batch):
            ious[i, : len(p.rows)] = p.ious
        ignore = np.stack([p.gt.ignore for p in batch])
        crowd = np.stack([p.gt.crowd for p in batch])
        matched = _greedy_match(ious, ignore, crowd)  # [P, T, D]
        for i, p in enumerate(batch):
            m = matched[i, :, : len(p.rows)]
            p.status[:, p.rows] = np.where(m != 0, m, p.status[:, p.rows])
        start = end
