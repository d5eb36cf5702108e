"""Which images a report draws, and what is drawn on them (predictions beside the ground truth)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..data.coco import CocoIndex
from ..data.images import load_image
from ..engine.predictor import Predictor
from ..engine.results_file import read_results_file
from ..structures import Detections

GRID_IMAGES = 8


def grid_ids(index: CocoIndex, pair: tuple[str, str] | None, count: int) -> list[int]:
    """Up to ``count`` images to draw: those with the pair's classes first, then others with objects."""
    if count <= 0:
        return []
    pair_labels = {index.class_names.index(n) for n in pair} if pair else set()

    def rank(k: int) -> tuple[int, int]:
        labels = {a.label for a in index.annotations[index.images[k].id] if not a.iscrowd}
        return (-len(labels & pair_labels), 0 if labels else 1)

    order = sorted(range(len(index.images)), key=lambda k: (*rank(k), k))
    return [index.images[k].id for k in order[:count]]


def predict_ids(predictor: Predictor, index: CocoIndex, ids: Sequence[int]) -> dict[int, Detections]:
    records = {r.id: r for r in index.images}
    chosen = [records[i] for i in ids]
    preds = predictor.predict_files(
        [r.path for r in chosen],
        [r.id for r in chosen],
        expected_sizes=[(r.width, r.height) for r in chosen],
        progress=False,
    )
    return {p.image_id: p.detections for p in preds}


def grid_items(index: CocoIndex, detections: dict[int, Detections], ids: Sequence[int]) -> list[dict[str, Any]]:
    records = {r.id: r for r in index.images}
    items = []
    for image_id in ids:
        rec = records[image_id]
        boxes, labels = index.training_targets(image_id)
        items.append(
            {
                "image": load_image(rec.path),
                "detections": detections.get(image_id),
                "gt": (boxes, labels),
                "title": rec.file_name,
            }
        )
    return items


def results_detections(results_json: str | os.PathLike, index: CocoIndex, ids: set[int]) -> dict[int, Detections]:
    """The detections a COCO results file gives the images ``ids`` (an image without records has none)."""
    found = read_results_file(
        results_json, [r.id for r in index.images], list(index.label_to_category_id), str(index.annotations_file)
    )
    return {i: found.get(i, Detections.empty()) for i in ids}
