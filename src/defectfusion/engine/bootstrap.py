"""How sure is a difference? Paired resamples of the test images, scored by the evaluator's own rules.

Resample the images with replacement, score every model on the same resample, and repeat: the
spread of the differences says how much of a gap between two models the choice of images alone
could produce. Paired (the same images for every model in a draw), so image difficulty cancels
out of the differences. Every resample is scored as :class:`~.evaluator.DetectionEvaluator` scores
a set (COCO AP by pycocotools' rules: at most 100 detections per image *and class*, greedy
matching at IoU 0.5:0.95, crowd regions ignored, 101-point interpolated precision; the confusion
matrix summed from its per-image counts), so the identity resample reproduces the evaluator.

How it is fast. COCO matches detections to ground truth within one image and class, so the
matching never changes with the draw: each model is matched once, and a draw is a vector of
per-image counts ``w`` (``[N]``, how often each image was drawn). Per class and IoU threshold the
detections are put in COCO's order once (score descending, ties by image id, then by place in the
image's list); a draw repeats each image's detections ``w[n]`` times. Its precision-recall curve
only needs the points where a run of true positives ends (a false positive follows or the list
ends): false positives lower precision without raising recall and ignored detections change
neither, so COCO's precision envelope and its ``searchsorted`` over recall thresholds never pick
out any other point, and within a run precision only rises (a zero-weight image's run adds
nothing and lies below the run before it). So for the K run ends and a block of draws ``W``
(``[D, N]``): true positives ``W @ Tcum``, false positives ``W @ Fcum`` (``[N, K]`` cumulative
counts, float64: integers stay exact), ground truth ``W @ G``, then the envelope and the recall
thresholds for all rows at once.

Ties. COCO orders tied scores by image id, and a resampled dataset by draw position, copies of one
image apart. Here a draw keeps the identity order: tied detections of different images by image
id, the copies of one detection next to each other. Ties are an arbitrary order in COCO too: this
one reproduces the evaluator on the identity draw and a resampled COCO exactly wherever tied
detections of a class are all true or all false positives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..structures import Detections
from .evaluator import DetectionEvaluator

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)  # COCO's iouThrs
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round(1.0 / 0.01)) + 1)  # COCO's recThrs
MAX_DETECTIONS = 100  # per image and class
AREA_ALL = (0.0, 1e10)  # COCO's area range "all"
_BLOCK = 1 << 22  # float64 elements per block of draws (32 MiB per array)


@dataclass
class Resampled:
    """One model's metrics on every draw (NaN where undefined).

    Attributes:
        map50, map: ``[draws]`` mAP@0.5 and mAP@0.5:0.95.
        ap50, ap: ``[draws, C]`` per-class AP.
        confusion: ``[draws, C+1, C+1]`` confusion-matrix counts (rows ground truth).
    """

    map50: np.ndarray
    map: np.ndarray
    ap50: np.ndarray
    ap: np.ndarray
    confusion: np.ndarray


def image_draws(image_ids: Sequence[int], draws: int, seed: int = 0) -> np.ndarray:
    """``[draws, N]`` resamples of ``image_ids`` with replacement (the same for every model)."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.asarray(image_ids), size=(draws, len(image_ids)), replace=True)


def count_weights(draws: np.ndarray, image_ids: Sequence[int]) -> np.ndarray:
    """``[D, N]`` int64: how often each of ``image_ids`` (``[N]``) occurs in each row of ``draws`` (``[D, M]``)."""
    draws = np.asarray(draws, dtype=np.int64)
    if draws.ndim != 2:
        raise ValueError(f"draws must be [draws, images] image ids, got shape {draws.shape}")
    ids = np.asarray(image_ids, dtype=np.int64)
    column = {int(image_id): n for n, image_id in enumerate(ids)}
    drawn = np.unique(draws)
    unknown = [int(i) for i in drawn if int(i) not in column]
    if unknown:
        raise ValueError(f"draws hold image id {unknown[0]}, which is not in the ground truth")
    lookup = np.array([column[int(i)] for i in drawn], dtype=np.int64)
    columns = lookup[np.searchsorted(drawn, draws)]  # [D, M] the column of each drawn image
    counts = np.zeros((len(draws), len(ids)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(draws)), draws.shape[1]), columns.ravel()), 1)
    return counts


# ---------------------------------------------------------------------------- matching (once per model)


@dataclass
class _PairGT:
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
class _GroundTruth:
    """The evaluator's ground truth, images in id order (``N``), contiguous labels (``C``).

    Attributes:
        pairs: ``(image index, label)`` -> :class:`_PairGT` (absent: no ground truth there).
        counts: ``[N, C]`` float64 non-ignored ground truth per image and class (COCO's ``npig``).
    """

    image_ids: list[int]
    pairs: dict[tuple[int, int], _PairGT]
    counts: np.ndarray


def _ground_truth(ev: DetectionEvaluator) -> _GroundTruth:
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
        pairs[key] = _PairGT(boxes, ignore, crowd)
        counts[key] = np.count_nonzero(~ignore)
    return _GroundTruth(image_ids, pairs, counts)


def _coco_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
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
class _Pair:
    """One image and class of one model: its kept detections (score order) and their status."""

    image: int
    label: int
    scores: np.ndarray  # [D]
    status: np.ndarray  # [T, D] int8: 1 true positive, 0 false positive, -1 ignored
    ious: np.ndarray  # [D', G] the rows of detections that overlap some ground truth by >= 0.5
    rows: np.ndarray  # [D'] their indices among the D detections
    gt: _PairGT | None


def _pairs(gt: _GroundTruth, detections: Mapping[int, Detections]) -> list[_Pair]:
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
                ious = _coco_iou(boxes[idx], pair_gt.boxes, pair_gt.crowd)
                rows = np.flatnonzero((ious >= IOU_THRESHOLDS[0]).any(axis=1))
                ious = ious[rows]
            pairs.append(_Pair(n, int(c), scores[idx], status, ious, rows, pair_gt))
    return pairs


def _match_pairs(pairs: Sequence[_Pair]) -> None:
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


# ---------------------------------------------------------------------------- count matrices


@dataclass
class _MatchedModel:
    """A model matched once: the count matrices a draw's per-image counts multiply.

    Attributes:
        columns: ``[N, S]`` float64; per class ``c`` a block of ``2 * T * K_c`` columns: the
            cumulative true positives ``[T, K_c]`` of each image up to each run end, then the
            false positives before it (``K_c``: the most run ends over thresholds; shorter
            thresholds repeat their last point, which changes nothing).
        blocks: per class, ``(first column, K_c)``.
        gt_counts: ``[N, C]`` non-ignored ground truth per image and class.
        confusion: ``[N, (C+1)^2]`` each image's confusion-matrix counts (evaluator's rules).
    """

    columns: np.ndarray
    blocks: list[tuple[int, int]]
    gt_counts: np.ndarray
    confusion: np.ndarray


def _run_end_counts(image: np.ndarray, status: np.ndarray, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """One class at one threshold, detections in COCO's order: ``image`` ``[M]``, ``status`` ``[M]``.

    Returns ``[N, K]`` cumulative true and false positives of each image at the K run ends.
    """
    keep = status >= 0
    image, tp = image[keep], status[keep] == 1
    ends = np.flatnonzero(tp & np.append(~tp[1:], True))  # a true positive not followed by one
    K = len(ends)
    run = np.searchsorted(ends, np.arange(len(tp)))  # the run end at or after each detection
    inside = run < K

    def cumulative(mask: np.ndarray) -> np.ndarray:
        flat = image[mask & inside] * K + run[mask & inside]
        return np.cumsum(np.bincount(flat, minlength=num_images * K).reshape(num_images, K), axis=1)

    return cumulative(tp).astype(np.float64), cumulative(~tp).astype(np.float64)


def _pad(counts: np.ndarray, width: int) -> np.ndarray:
    """``[N, K]`` -> ``[N, width]``, repeating the last point (zeros when there is none)."""
    if counts.shape[1] == 0:
        return np.zeros((counts.shape[0], width))
    return np.concatenate([counts, np.repeat(counts[:, -1:], width - counts.shape[1], axis=1)], axis=1)


def _match_model(ev: DetectionEvaluator, gt: _GroundTruth, detections: Mapping[int, Detections]) -> _MatchedModel:
    """Match one model's detections once (COCO's rules) and build its count matrices.

    ``ev`` holds the ground truth ``gt`` came from and the confusion-matrix settings; images of
    the ground truth without an entry in ``detections`` have none (other entries are not scored).
    """
    N, C = len(gt.image_ids), ev.num_classes
    ev.reset()  # the evaluator checks the detections and counts each image's confusion matrix
    ev.process(gt.image_ids, [detections.get(i, Detections.empty()) for i in gt.image_ids])
    per_image = ev.confusion_per_image()
    confusion = np.stack([per_image[i].ravel() for i in gt.image_ids]) if N else np.zeros((0, (C + 1) ** 2))
    pairs = _pairs(gt, detections)
    _match_pairs(pairs)
    blocks, parts, start = [], [], 0
    for c in range(C):
        mine = [p for p in pairs if p.label == c]  # in image order
        image = np.concatenate([np.full(len(p.scores), p.image) for p in mine] + [np.zeros(0, dtype=np.int64)])
        scores = np.concatenate([p.scores for p in mine] + [np.zeros(0)])
        status = np.concatenate([p.status for p in mine] + [np.zeros((len(IOU_THRESHOLDS), 0), np.int8)], axis=1)
        order = np.argsort(-scores, kind="stable")  # COCO's accumulate: ties keep image order
        counts = [_run_end_counts(image[order], s[order], N) for s in status]
        width = max(1, *(tp.shape[1] for tp, _ in counts))
        tp = np.stack([_pad(tp, width) for tp, _ in counts], axis=1).reshape(N, -1)
        fp = np.stack([_pad(fp, width) for _, fp in counts], axis=1).reshape(N, -1)
        parts += [tp, fp]
        blocks.append((start, width))
        start += 2 * tp.shape[1]
    return _MatchedModel(np.concatenate(parts, axis=1), blocks, gt.counts, confusion.astype(np.float64))


# ---------------------------------------------------------------------------- scoring draws


def _average_precision(tp: np.ndarray, fp: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """COCO's 101-point AP from a curve's points.

    Args:
        tp, fp: ``[B, T, K]`` cumulative true and false positives at each point, in score order.
        npig: ``[B]`` non-ignored ground truth.

    Returns:
        ``[B, T]`` AP (NaN where ``npig`` is 0). Precision is COCO's ``tp / (tp + fp + eps)``
        with its envelope from the right; recall threshold ``r`` takes the envelope at the first
        point with recall >= r (0 beyond the last): the thresholds first reached at point k are
        ``reached[k] - reached[k-1]``, with ``reached`` the number of thresholds <= its recall.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / npig[:, None, None]
    precision = tp / (fp + tp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[..., ::-1], axis=-1)[..., ::-1]
    reached = np.searchsorted(RECALL_THRESHOLDS, recall, side="right")
    newly = np.diff(reached, axis=-1, prepend=0)
    ap = (envelope * newly).sum(axis=-1) / len(RECALL_THRESHOLDS)
    ap[npig == 0] = np.nan
    return ap


def _nanmean(values: np.ndarray) -> np.ndarray:
    """``[B, C]`` -> ``[B]`` mean of the defined values (NaN when none is)."""
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / defined.sum(axis=1)


def _score_counts(model: _MatchedModel, counts: np.ndarray) -> Resampled:
    """A matched model's metrics on every draw given as per-image counts ``[D, N]``."""
    D, C = len(counts), len(model.blocks)
    ap50, ap = np.full((D, C), np.nan), np.full((D, C), np.nan)
    step = max(1, _BLOCK // max(1, model.columns.shape[1]))
    weights = counts.astype(np.float64)
    for lo in range(0, D, step):
        w = weights[lo : lo + step]
        product, npig = w @ model.columns, w @ model.gt_counts  # [B, S], [B, C]
        for c, (start, K) in enumerate(model.blocks):
            size = len(IOU_THRESHOLDS) * K
            tp = product[:, start : start + size].reshape(len(w), -1, K)
            fp = product[:, start + size : start + 2 * size].reshape(len(w), -1, K)
            per_threshold = _average_precision(tp, fp, npig[:, c])  # [B, T]
            ap50[lo : lo + step, c] = per_threshold[:, 0]
            ap[lo : lo + step, c] = per_threshold.mean(axis=1)
    confusion = np.rint(weights @ model.confusion).astype(np.int64)
    side = int(round(np.sqrt(model.confusion.shape[1])))
    return Resampled(_nanmean(ap50), _nanmean(ap), ap50, ap, confusion.reshape(D, side, side))


def resample_counts(
    gt: Mapping[str, Any],
    models: Mapping[str, Mapping[int, Detections]],
    counts: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    conf_threshold: float = 0.25,
    progress: bool = False,
) -> dict[str, Resampled]:
    """Every model's metrics on every draw given as per-image counts.

    Args:
        gt: COCO ground truth (``images``, ``annotations``, ``categories``); contiguous label
            ``i`` is the ``i``-th category.
        models: per model, its detections by image id (images without an entry: none).
        counts: ``[D, N]`` non-negative integers: how often each image of ``gt`` (in id order)
            is in each draw (:func:`count_weights`).
        iou_threshold, conf_threshold: the confusion matrix's (COCO AP has its own).
        progress: show a bar over the models.
    """
    ev = DetectionEvaluator(dict(gt), iou_threshold=iou_threshold, conf_threshold=conf_threshold)
    truth = _ground_truth(ev)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(truth.image_ids):
        raise ValueError(f"counts must be [draws, {len(truth.image_ids)}] (one column per image), got {counts.shape}")
    if not (np.issubdtype(counts.dtype, np.integer) and (counts >= 0).all()):
        raise ValueError("counts must be non-negative integers (how often each image is drawn)")
    out = {}
    for name, detections in tqdm(models.items(), desc="bootstrap", unit="model", disable=not progress, leave=False):
        out[name] = _score_counts(_match_model(ev, truth, detections), counts)
    return out


def resample(
    gt: Mapping[str, Any],
    models: Mapping[str, Mapping[int, Detections]],
    draws: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    conf_threshold: float = 0.25,
    progress: bool = False,
) -> dict[str, Resampled]:
    """Every model's metrics on every draw of :func:`image_draws` (``[D, N]`` image ids per row).

    See :func:`resample_counts` for the arguments; the order of the ids within a draw does not
    matter (ties are ordered as the module docstring says).
    """
    ids = sorted(int(img["id"]) for img in gt["images"])
    return resample_counts(
        gt,
        models,
        count_weights(draws, ids),
        iou_threshold=iou_threshold,
        conf_threshold=conf_threshold,
        progress=progress,
    )
