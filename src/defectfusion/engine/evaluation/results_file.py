"""Any detector's COCO results file: read back as detections, or scored against annotations."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import DataError
from ...io import read_json
from ...structures import Detections, Metrics
from .evaluator import DetectionEvaluator, check_bbox, is_number, xywh_to_xyxy


def read_results_file(
    results_json: Path | str, image_ids: Sequence[int], category_ids: Sequence[int], source: str = "the annotations"
) -> dict[int, Detections]:
    """The detections of a COCO results file, per image id (boxes ``xyxy``, best score first).

    ``results_json`` is a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``;
    every record must name one of ``image_ids`` and ``category_ids`` (label ``i`` is
    ``category_ids[i]``). Each bad record is one :class:`DataError` naming it.
    """
    path = Path(results_json)
    records = read_json(path, "results file")
    if not isinstance(records, list):
        raise DataError(f"results file {path}: expected a JSON list of detections, got {type(records).__name__}")
    known_images = set(image_ids)
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    grouped: dict[int, list[tuple[list[float], float, int]]] = defaultdict(list)
    for n, r in enumerate(records):
        where = f"results file {path}, record {n}"
        if not isinstance(r, dict):
            raise DataError(f"{where}: expected an object, got {r!r}")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in r]
        if missing:
            raise DataError(f"{where}: missing {missing}; each record needs image_id, category_id, bbox, score")
        if r["image_id"] not in known_images:
            raise DataError(f"{where}: image_id {r['image_id']!r} is not in {source}")
        if r["category_id"] not in label_of:
            raise DataError(f"{where}: category_id {r['category_id']!r} is not in {source}'s categories")
        check_bbox(r["bbox"], where)
        if not is_number(r["score"]):
            raise DataError(f"{where}: 'score' must be a finite number, got {r['score']!r}")
        grouped[r["image_id"]].append((r["bbox"], float(r["score"]), label_of[r["category_id"]]))
    out = {}
    for image_id, recs in grouped.items():
        recs.sort(key=lambda t: -t[1])
        boxes = xywh_to_xyxy(np.array([b for b, _, _ in recs], dtype=np.float64).reshape(-1, 4))
        # float64: the evaluator scores the file's numbers exactly as written
        out[image_id] = Detections(
            torch.tensor(boxes, dtype=torch.float64),
            torch.tensor([s for _, s, _ in recs], dtype=torch.float64),
            torch.tensor([c for _, _, c in recs], dtype=torch.int64),
        )
    return out


def evaluate_results_file(
    results_json: Path | str, annotations: Path | str | dict, *, all_images: bool = True, **kw: Any
) -> Metrics:
    """Metrics of any detector's COCO results file against COCO annotations.

    A results file cannot say which images were run, so by default every annotated image is
    evaluated (images without a record: "predicted nothing"); ``all_images=False`` keeps only
    images with at least one record. ``kw`` goes to :class:`DetectionEvaluator`.
    """
    ev = DetectionEvaluator(annotations, **kw)
    detections = read_results_file(results_json, ev.image_ids, ev.cat_ids, ev.source)
    ev.process(list(detections), list(detections.values()))
    return ev.evaluate(all_images=all_images)
