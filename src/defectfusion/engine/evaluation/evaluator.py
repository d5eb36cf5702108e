"""Detection evaluation: COCO AP, per-class P/R/F1 at best F1, confusion matrix.

Use ``DetectionEvaluator(annotations)`` with ``reset() / process(image_ids, detections) /
evaluate()``; or :func:`.results_file.evaluate_results_file` for any detector's COCO results file. Contiguous
label ``i`` is the ``i``-th entry of the annotations' ``categories`` list (list order, not id
order); class names come from there.

Which images count: by default ``evaluate()`` covers the images passed to ``process`` (an image
processed with empty detections means "the model predicted nothing there"); GT images never
processed are left out, so evaluating a subset is fair. ``evaluate(all_images=True)`` covers
every image of the annotations, unprocessed ones counting as "predicted nothing". Processing an
image twice keeps the last detections (DDP samplers pad with repeated images).

``evaluate()`` returns a :class:`~defectfusion.structures.Metrics`; its ``to_dict()`` (what
``write_metrics`` writes to ``metrics.json``) has this schema (strict JSON: no NaN, ``null`` means "undefined here")::

    {"map50": float|null,          # COCO mAP@0.5, mean over classes with non-crowd GT
     "map": float|null,            # COCO mAP@0.5:0.95, same classes
     "num_images": int,            # images evaluated
     "num_ground_truth": int,      # non-crowd GT boxes in them
     "num_detections": int,        # predictions in them (all scores)
     "per_class": {name: {
         "ap50": float|null, "ap": float|null,  # null when the class has no non-crowd GT
         "precision": float|null, "recall": float|null, "f1": float|null,
         "conf": float|null,       # the confidence at which F1 is maximal (keep score >= conf)
         "num_gt": int, "num_pred": int}},
     "confusion_matrix": {
         "labels": [name, ..., "background"],
         "counts": [[int]],        # (C+1) x (C+1); counts[gt][pred]
         "normalized": [[float|null]],  # row-normalised; rows with zero total are null
         "rows": "ground truth", "columns": "prediction",
         "iou_threshold": float, "conf_threshold": float},
     "pr_curves": {name: {"recall": [101 floats 0..1],
                          "precision": [101 float|null]}}}  # IoU 0.5, area all, maxDets 100

How each number is computed:

- AP: ``faster_coco_eval`` COCOeval (bbox), read from ``eval["precision"]`` exactly as COCO's
  summary does (area "all", maxDets 100, mean over recall points with precision > -1); equals
  pycocotools. Crowd GT are ignore regions. A class with GT but no predictions has AP 0.
- P/R/F1: per class and image, predictions in score order take the best unmatched GT of the same
  class with IoU >= ``iou_threshold`` (unmatched ones on a crowd region are ignored); over all
  images, the exact P/R curve over confidence; the point of maximal F1 is reported
  (:func:`defectfusion.engine.evaluation.metrics.best_f1` lists the undefined cases). No maxDets limit.
- Confusion matrix: predictions with ``score >= conf_threshold``, class-agnostic one-to-one
  matching at IoU >= ``iou_threshold``, highest IoU first. Background row: false positives;
  background column: missed GT; predictions on crowd regions are not counted.
"""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster

from ...data.coco import parse_categories
from ...errors import ConfigError, DataError
from ...io import atomic_write_json, read_json
from ...structures import ClassMetrics, Detections, Metrics
from .metrics import (
    best_f1,
    coco_class_stats,
    confusion_image,
    match_by_score,
    mean_or_none,
    row_normalize,
)

BACKGROUND = "background"
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recThrs


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """faster_coco_eval prints progress through this; evaluation should be silent."""


@dataclass
class _ImageGT:
    boxes: np.ndarray  # [G, 4] xyxy, non-crowd
    labels: np.ndarray  # [G] contiguous
    crowd_boxes: np.ndarray  # [Gc, 4] xyxy
    crowd_labels: np.ndarray  # [Gc]


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_bbox(bbox: Any, where: str) -> None:
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        raise DataError(f"{where}: 'bbox' must be 4 finite numbers [x, y, width, height], got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise DataError(f"{where}: 'bbox' width and height must be >= 0, got {bbox!r}")


def _load_annotations(annotations: Path | str | dict) -> tuple[dict, str]:
    """Validated, normalised deep copy of a COCO annotations dict, and its source name.

    Adds ``iscrowd`` 0 and ``area`` w*h where missing (pycocotools needs both) and renumbers
    annotation ids, since COCO indexes by id and silently drops duplicates.
    """
    if isinstance(annotations, dict):
        data, src = copy.deepcopy(annotations), "annotations dict"
    else:
        src = f"annotations file {annotations}"
        data = read_json(Path(annotations), "annotations file")
    if not isinstance(data, dict):
        raise DataError(f"{src}: expected a COCO object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{src}: missing list '{key}' (expected COCO detection format)")
    anns = data.setdefault("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{src}: 'annotations' must be a list")
    _, category_ids = parse_categories(data["categories"], src)
    for i, img in enumerate(data["images"]):
        if not (isinstance(img, dict) and isinstance(img.get("id"), int)):
            raise DataError(f"{src}: images[{i}] needs an integer 'id', got {img!r}")
    image_ids = {img["id"] for img in data["images"]}
    cat_ids = set(category_ids)
    for i, a in enumerate(anns):
        where = f"{src}, annotations[{i}]"
        if not isinstance(a, dict):
            raise DataError(f"{where}: expected an object, got {a!r}")
        if a.get("image_id") not in image_ids:
            raise DataError(f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in cat_ids:
            raise DataError(f"{where}: category_id {a.get('category_id')!r} is not in 'categories'")
        check_bbox(a.get("bbox"), where)
        a["id"] = i + 1
        a["iscrowd"] = int(bool(a.get("iscrowd", 0)))
        if not is_number(a.get("area")):
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
    return data, src


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


class DetectionEvaluator:
    """Accumulates detections image by image and computes the metrics described above.

    Args:
        annotations: COCO annotations file or dict (the ground truth).
        iou_threshold: IoU for P/R/F1 matching and the confusion matrix (COCO AP always uses
            0.5 and 0.5:0.95).
        conf_threshold: minimum score of a prediction counted in the confusion matrix.
    """

    def __init__(
        self, annotations: Path | str | dict, *, iou_threshold: float = 0.5, conf_threshold: float = 0.25
    ) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if not 0.0 <= conf_threshold <= 1.0:
            raise ConfigError(f"conf_threshold must be in [0, 1], got {conf_threshold}")
        self.iou_threshold = float(iou_threshold)
        self.conf_threshold = float(conf_threshold)
        self.dataset, self.source = _load_annotations(annotations)
        cats = self.dataset["categories"]
        self.class_names: list[str] = [c["name"] for c in cats]
        self.cat_ids: list[int] = [c["id"] for c in cats]
        self.image_ids: list[int] = [img["id"] for img in self.dataset["images"]]
        label_of = {cid: i for i, cid in enumerate(self.cat_ids)}

        per_image: dict[int, list[dict]] = defaultdict(list)
        for a in self.dataset["annotations"]:
            per_image[a["image_id"]].append(a)
        self._gt: dict[int, _ImageGT] = {}
        for img_id in self.image_ids:
            anns = per_image.get(img_id, [])
            boxes = xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4))
            labels = np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64)
            crowd = np.array([a["iscrowd"] == 1 for a in anns], dtype=bool)
            self._gt[img_id] = _ImageGT(boxes[~crowd], labels[~crowd], boxes[crowd], labels[crowd])
        self._coco_gt = COCO(self.dataset, print_function=_quiet)
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def reset(self) -> None:
        """Forget all processed detections."""
        # image id -> (boxes [N,4] xyxy float64, scores [N] float64, labels [N] int64)
        self._preds: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def process(self, image_ids: Sequence[int], detections: Sequence[Detections]) -> None:
        """Record the detections of a batch of images.

        ``detections[i]`` belongs to ``image_ids[i]`` (a COCO image id of the annotations): boxes
        ``[N, 4]`` xyxy in original-image pixels, scores ``[N]``, labels ``[N]`` in ``0 .. C-1``.
        """
        if len(image_ids) != len(detections):
            raise ValueError(f"got {len(image_ids)} image ids but {len(detections)} detections")
        for img_id, det in zip(image_ids, detections, strict=True):
            if det.boxes.ndim != 2 or det.boxes.shape[1] != 4:
                raise ValueError(f"image {img_id}: Detections.boxes must be [N, 4], got {list(det.boxes.shape)}")
            # float64 so that numbers match a COCO results file written from the same boxes
            boxes = det.boxes.detach().to("cpu", torch.float64).numpy()
            scores = det.scores.detach().to("cpu", torch.float64).numpy().reshape(-1)
            labels = det.labels.detach().to("cpu", torch.int64).numpy().reshape(-1)
            self._add(int(img_id), boxes, scores, labels)

    def _add(self, image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
        if image_id not in self._gt:
            raise DataError(
                f"detections for image id {image_id}, which is not in {self.source}; "
                "evaluate with the annotations of the images that were predicted"
            )
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id}: boxes {boxes.shape}, scores {scores.shape}, labels {labels.shape} differ in length"
            )
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise DataError(
                f"detections for image {image_id} have label {int(bad[0])}, but {self.source} defines "
                f"{self.num_classes} classes (0..{self.num_classes - 1}); does the model match the dataset?"
            )
        self._preds[image_id] = (boxes, scores, labels)

    def evaluate(self, *, all_images: bool = False) -> Metrics:
        """Metrics over the processed images (``all_images``: over every annotated image)."""
        ids = sorted(self.image_ids if all_images else self._preds)
        C = self.num_classes
        empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
        preds = {i: self._preds.get(i, empty) for i in ids}

        ap50, ap, curves = self._coco(ids, preds)

        scores: list[list[np.ndarray]] = [[] for _ in range(C)]
        flags: list[list[np.ndarray]] = [[] for _ in range(C)]
        num_gt, num_pred = np.zeros(C, dtype=np.int64), np.zeros(C, dtype=np.int64)
        counts = np.zeros((C + 1, C + 1), dtype=np.int64)
        for i in ids:
            gt, (boxes, sc, labels) = self._gt[i], preds[i]
            num_gt += np.bincount(gt.labels, minlength=C)
            num_pred += np.bincount(labels, minlength=C)
            for c in np.union1d(gt.labels, labels):
                d = labels == c
                m = match_by_score(
                    boxes[d],
                    sc[d],
                    gt.boxes[gt.labels == c],
                    gt.crowd_boxes[gt.crowd_labels == c],
                    self.iou_threshold,
                )
                scores[c].append(sc[d][m >= 0])
                flags[c].append(m[m >= 0] == 1)
            keep = sc >= self.conf_threshold
            confusion_image(counts, gt.boxes, gt.labels, gt.crowd_boxes, boxes[keep], labels[keep], self.iou_threshold)

        per_class: dict[str, ClassMetrics] = {}
        pr_curves: dict[str, dict[str, list]] = {}
        for c, name in enumerate(self.class_names):
            op = best_f1(
                np.concatenate(scores[c]) if scores[c] else np.zeros(0),
                np.concatenate(flags[c]) if flags[c] else np.zeros(0, dtype=bool),
                int(num_gt[c]),
            )
            per_class[name] = ClassMetrics(
                ap50=ap50[c],
                ap=ap[c],
                precision=op.precision,
                recall=op.recall,
                f1=op.f1,
                conf=op.conf,
                num_gt=int(num_gt[c]),
                num_pred=int(num_pred[c]),
            )
            pr_curves[name] = {"recall": [float(r) for r in RECALL_POINTS], "precision": curves[c]}

        return Metrics(
            map50=mean_or_none(ap50),
            map=mean_or_none(ap),
            num_images=len(ids),
            num_ground_truth=int(num_gt.sum()),
            num_detections=int(num_pred.sum()),
            per_class=per_class,
            confusion_matrix={
                "labels": [*self.class_names, BACKGROUND],
                "counts": counts.tolist(),
                "normalized": row_normalize(counts),
                "rows": "ground truth",
                "columns": "prediction",
                "iou_threshold": self.iou_threshold,
                "conf_threshold": self.conf_threshold,
            },
            pr_curves=pr_curves,
        )

    def _coco(
        self, ids: list[int], preds: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> tuple[list[float | None], list[float | None], list[list[float | None]]]:
        """Per-class AP@0.5, AP@0.5:0.95 and IoU=0.5 PR curves (contiguous label order)."""
        C = self.num_classes
        if not ids:  # COCOeval on no images is meaningless: everything undefined
            return [None] * C, [None] * C, [[None] * len(RECALL_POINTS) for _ in range(C)]
        results = [
            {
                "image_id": i,
                "category_id": self.cat_ids[int(lab)],
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                "score": float(s),
            }
            for i in ids
            for b, s, lab in zip(*preds[i], strict=True)
        ]
        return coco_class_ap(self._coco_gt, results, ids, self.cat_ids)

    def confusion_per_image(self) -> dict[int, np.ndarray]:
        """The confusion-matrix counts ``[C+1, C+1]`` each processed image adds (summing them gives
        ``evaluate()``'s matrix over those images): what a bootstrap resamples."""
        C = self.num_classes
        out = {}
        for i, (boxes, sc, labels) in self._preds.items():
            gt = self._gt[i]
            counts = np.zeros((C + 1, C + 1), dtype=np.int64)
            keep = sc >= self.conf_threshold
            confusion_image(counts, gt.boxes, gt.labels, gt.crowd_boxes, boxes[keep], labels[keep], self.iou_threshold)
            out[i] = counts
        return out


def coco_class_ap(
    coco_gt: COCO, results: list[dict[str, Any]], image_ids: Sequence[int], cat_ids: Sequence[int]
) -> tuple[list[float | None], list[float | None], list[list[float | None]]]:
    """Per-class AP@0.5, AP@0.5:0.95 and IoU=0.5 PR curves (in ``cat_ids`` order) by COCO's rules.

    The one place COCO AP is computed: the evaluator and the bootstrap's resamples both come here
    (bbox IoU, area "all", at most 100 detections per image and class, undefined -> ``None``).
    """
    coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_quiet)
    ev.params.imgIds = list(image_ids)
    ev.evaluate()
    ev.accumulate()
    k_of = {int(cid): k for k, cid in enumerate(ev.params.catIds)}  # COCO sorts category ids
    stats = [coco_class_stats(ev.eval["precision"], ev.params.iouThrs, k_of[int(cid)]) for cid in cat_ids]
    return [s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats]


def _empty_results(coco_gt: COCO) -> COCO:
    empty = COCO(print_function=_quiet)
    empty.dataset = {
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset["categories"],
        "annotations": [],
    }
    empty.createIndex()
    return empty


def write_metrics(metrics: Metrics, path: Path | str) -> None:
    """Write metrics as strict JSON (no NaN/Infinity) atomically: ``metrics.to_dict()``."""
    data = metrics.to_dict()
    try:
        json.dumps(data, allow_nan=False)  # check before anything is written
    except ValueError as e:
        raise ValueError(f"metrics hold NaN or infinity, which strict JSON cannot store: {e}") from None
    atomic_write_json(path, data)
