"""How sure is a difference? Paired resamples of the test images, scored by the evaluator's own rules.

Resample the images with replacement, score every model on the same resample, and repeat: the
spread of the differences says how much of a gap between two models the choice of images alone
could produce. Paired (the same images for every model in a draw), so image difficulty cancels
out of the differences. Every resample is scored as :class:`~.evaluator.DetectionEvaluator` scores
a set (COCO AP by pycocotools' rules: at most 100 detections per image *and class*, greedy
matching at IoU 0.5:0.95, crowd regions ignored, 101-point interpolated precision; the confusion
matrix summed from its per-image counts), so the identity resample reproduces the evaluator.

How it is fast. COCO matches detections to ground truth within one image and class, so the
matching never changes with the draw: each model is matched once (:mod:`.coco_matching`), and a draw is a vector of
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

from ...structures import Detections
from .coco_matching import IOU_THRESHOLDS, GroundTruth, ground_truth, image_class_pairs, match_pairs
from .evaluator import DetectionEvaluator

RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round(1.0 / 0.01)) + 1)  # COCO's recThrs
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


def _match_model(ev: DetectionEvaluator, gt: GroundTruth, detections: Mapping[int, Detections]) -> _MatchedModel:
    """Match one model's detections once (COCO's rules) and build its count matrices.

    ``ev`` holds the ground truth ``gt`` came from and the confusion-matrix settings; images of
    the ground truth without an entry in ``detections`` have none (other entries are not scored).
    """
    N, C = len(gt.image_ids), ev.num_classes
    ev.reset()  # the evaluator checks the detections and counts each image's confusion matrix
    ev.process(gt.image_ids, [detections.get(i, Detections.empty()) for i in gt.image_ids])
    per_image = ev.confusion_per_image()
    confusion = np.stack([per_image[i].ravel() for i in gt.image_ids]) if N else np.zeros((0, (C + 1) ** 2))
    pairs = image_class_pairs(gt, detections)
    match_pairs(pairs)
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
    truth = ground_truth(ev)
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
