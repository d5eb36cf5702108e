"""How sure is a difference in mAP@0.5? A paired bootstrap over validation images.

Resample the validation images with replacement, score every model on the same resample, and
repeat: the spread of the differences says how much of a gap between two models the choice of
validation images alone could produce. Paired (the same images for every model in a draw), so
image difficulty cancels out of the differences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from ..structures import Detections
from .metrics import coco_class_stats, mean_or_none

MAX_DETS = 100  # COCO's maxDets: detections beyond an image's best 100 do not change mAP


def _quiet(*_args, **_kwargs) -> None:
    pass


@dataclass(frozen=True)
class Interval:
    """A difference ``a - b`` of mAP@0.5 with its bootstrap interval."""

    a: str
    b: str
    observed: float
    low: float
    high: float
    level: float
    draws: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "difference": self.observed,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "draws": self.draws,
        }


def _map50(gt: dict[str, Any], results: list[dict[str, Any]], cat_ids: Sequence[int]) -> float | None:
    coco_gt = COCO(gt, print_function=_quiet)
    if not results:
        return 0.0 if gt["annotations"] else None
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(results), "bbox", print_function=_quiet)
    ev.params.iouThrs = np.array([0.5])
    ev.evaluate()
    ev.accumulate()
    k_of = {int(cid): k for k, cid in enumerate(ev.params.catIds)}
    return mean_or_none([coco_class_stats(ev.eval["precision"], ev.params.iouThrs, k_of[c])[0] for c in cat_ids])


def _coco_records(detections: Mapping[int, Detections], cat_ids: Sequence[int]) -> dict[int, list[dict]]:
    """Per image, its ``MAX_DETS`` best detections as COCO records (the rest never count)."""
    records = {}
    for image_id, det in detections.items():
        keep = det.scores.argsort(descending=True)[:MAX_DETS]
        records[image_id] = [
            {
                "category_id": cat_ids[int(label)],
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "score": float(score),
            }
            for box, score, label in zip(
                det.boxes[keep].tolist(), det.scores[keep].tolist(), det.labels[keep].tolist(), strict=True
            )
        ]
    return records


def _results(records: Mapping[int, list[dict]], ids: Sequence[int]) -> list[dict]:
    """COCO results for a resample: draw position ``n`` becomes image id ``n + 1``."""
    return [
        {**r, "image_id": new_id} for new_id, image_id in enumerate(ids, start=1) for r in records.get(image_id, ())
    ]


def _resampled_gt(gt: Mapping[str, Any], ids: Sequence[int]) -> dict[str, Any]:
    images = {img["id"]: img for img in gt["images"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    new_images, new_anns = [], []
    for new_id, image_id in enumerate(ids, start=1):
        new_images.append({**images[image_id], "id": new_id})
        for ann in by_image.get(image_id, []):
            new_anns.append({**ann, "id": len(new_anns) + 1, "image_id": new_id})
    return {"images": new_images, "annotations": new_anns, "categories": gt["categories"]}


def bootstrap_map50(
    gt: Mapping[str, Any], models: Mapping[str, Mapping[int, Detections]], draws: int = 200, seed: int = 0
) -> dict[str, np.ndarray]:
    """mAP@0.5 of every model on ``draws`` paired resamples of the ground truth's images.

    Args:
        gt: COCO ground truth (``images``, ``annotations``, ``categories``); contiguous label
            ``i`` is the ``i``-th category.
        models: per model, its detections by image id (images without an entry: none).

    Returns:
        Per model, ``[draws]`` mAP@0.5 values (NaN where undefined).
    """
    cat_ids = [int(c["id"]) for c in gt["categories"]]
    image_ids = [int(img["id"]) for img in gt["images"]]
    rng = np.random.default_rng(seed)
    values = {name: np.full(draws, np.nan) for name in models}
    records = {name: _coco_records(detections, cat_ids) for name, detections in models.items()}
    for d in range(draws):
        ids = rng.choice(image_ids, size=len(image_ids), replace=True).tolist()
        sample = _resampled_gt(gt, ids)
        for name in models:
            value = _map50(sample, _results(records[name], ids), cat_ids)
            values[name][d] = np.nan if value is None else value
    return values


def difference_interval(
    samples: Mapping[str, np.ndarray], a: str, b: str, observed: float, level: float = 0.95
) -> Interval:
    """Percentile interval of ``mAP(a) - mAP(b)`` over the paired draws."""
    diff = samples[a] - samples[b]
    diff = diff[np.isfinite(diff)]
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail]).tolist() if diff.size else (float("nan"),) * 2
    return Interval(a, b, float(observed), float(low), float(high), level, int(diff.size))
