"""How sure is a difference? Paired resamples of the test images, scored by the evaluator's own rules.

Resample the images with replacement, score every model on the same resample, and repeat: the
spread of the differences says how much of a gap between two models the choice of images alone
could produce. Paired (the same images for every model in a draw), so image difficulty cancels
out of the differences. Every resample is scored exactly as :class:`~.evaluator.DetectionEvaluator`
scores a set (COCO AP through :func:`~.evaluator.coco_class_ap`: at most 100 detections per image
*and class*; the confusion matrix summed from its per-image counts), so the identity resample
reproduces the evaluator's numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_coco_eval import COCO

from ..structures import Detections
from .evaluator import DetectionEvaluator, coco_class_ap
from .metrics import mean_or_none


def _quiet(*_args, **_kwargs) -> None:
    pass


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


def _resampled_gt(gt: Mapping[str, Any], ids: Sequence[int]) -> dict[str, Any]:
    """The ground truth of a resample: draw position ``n`` becomes image id ``n + 1``."""
    images = {img["id"]: img for img in gt["images"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    new_images, new_anns = [], []
    for new_id, image_id in enumerate(ids, start=1):
        new_images.append({**images[int(image_id)], "id": new_id})
        for ann in by_image.get(int(image_id), []):
            new_anns.append({**ann, "id": len(new_anns) + 1, "image_id": new_id})
    return {"images": new_images, "annotations": new_anns, "categories": gt["categories"]}


def _records(detections: Mapping[int, Detections], cat_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Per image, every detection as a COCO results record (COCO applies its own per-class cap)."""
    records = {}
    for image_id, det in detections.items():
        boxes, scores, labels = det.boxes.double().tolist(), det.scores.double().tolist(), det.labels.tolist()
        records[int(image_id)] = [
            {"category_id": cat_ids[int(lab)], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)}
            for b, s, lab in zip(boxes, scores, labels, strict=True)
        ]
    return records


def resample(
    gt: Mapping[str, Any],
    models: Mapping[str, Mapping[int, Detections]],
    draws: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    conf_threshold: float = 0.25,
) -> dict[str, Resampled]:
    """Every model's metrics on every draw of :func:`image_draws`.

    Args:
        gt: COCO ground truth (``images``, ``annotations``, ``categories``); contiguous label
            ``i`` is the ``i``-th category.
        models: per model, its detections by image id (images without an entry: none).
        draws: ``[D, N]`` image ids, one resample per row.
    """
    base = DetectionEvaluator(dict(gt)).dataset  # normalised as the evaluator scores it
    cat_ids = [int(c["id"]) for c in base["categories"]]
    C = len(cat_ids)
    records, per_image = {}, {}
    for name, detections in models.items():
        records[name] = _records(detections, cat_ids)
        ev = DetectionEvaluator(base, iou_threshold=iou_threshold, conf_threshold=conf_threshold)
        ids = [int(i) for i in ev.image_ids]
        ev.process(ids, [detections.get(i, Detections.empty()) for i in ids])
        per_image[name] = ev.confusion_per_image()
    D = len(draws)
    out = {
        name: Resampled(
            np.full(D, np.nan),
            np.full(D, np.nan),
            np.full((D, C), np.nan),
            np.full((D, C), np.nan),
            np.zeros((D, C + 1, C + 1), dtype=np.int64),
        )
        for name in models
    }
    for d, ids in enumerate(draws):
        coco_gt = COCO(_resampled_gt(base, ids), print_function=_quiet)
        new_ids = list(range(1, len(ids) + 1))
        for name in models:
            results = [
                {**r, "image_id": new_id}
                for new_id, image_id in enumerate(ids, start=1)
                for r in records[name].get(int(image_id), ())
            ]
            ap50, ap, _ = coco_class_ap(coco_gt, results, new_ids, cat_ids)
            target = out[name]
            target.ap50[d] = [np.nan if v is None else v for v in ap50]
            target.ap[d] = [np.nan if v is None else v for v in ap]
            m50, m = mean_or_none(ap50), mean_or_none(ap)
            target.map50[d] = np.nan if m50 is None else m50
            target.map[d] = np.nan if m is None else m
            target.confusion[d] = sum(per_image[name][int(i)] for i in ids)
    return out
