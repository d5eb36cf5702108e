"""Which images a report draws, and what is drawn on them (predictions beside the ground truth)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torchvision.ops import box_iou

from ..data.coco import CocoIndex
from ..data.images import load_image
from ..engine.evaluation.results_file import read_results_file
from ..engine.prediction.predictor import Predictor
from ..structures import Detections

GRID_IMAGES = 8


def grid_ids(index: CocoIndex, pair: tuple[str, str] | None, count: int) -> list[int]:
    """Up to ``count`` images to draw before anything is predicted: one per class first (the pair's
    classes before the others), then the images holding the pair, then others with objects."""
    if count <= 0:
        return []
    pair_labels = {index.class_names.index(n) for n in pair} if pair else set()
    labels_of = {r.id: {a.label for a in index.annotations[r.id] if not a.iscrowd} for r in index.images}

    def rank(k: int) -> tuple[int, int]:
        labels = labels_of[index.images[k].id]
        return (-len(labels & pair_labels), 0 if labels else 1)

    order = [index.images[k].id for k in sorted(range(len(index.images)), key=lambda k: (*rank(k), k))]
    chosen: list[int] = []
    for label in sorted(range(index.num_classes), key=lambda c: (c not in pair_labels, c)):
        first = next((i for i in order if label in labels_of[i] and i not in chosen), None)
        if first is not None and len(chosen) < count:
            chosen.append(first)
    chosen += [i for i in order if i not in chosen][: count - len(chosen)]
    return chosen


def _outcomes(index: CocoIndex, image_id: int, det: Detections, conf: float, iou: float) -> dict[str, int]:
    """Per image: objects found with their class (hits), found as another class (confusions), not found."""
    boxes, labels = index.training_targets(image_id)
    keep = det.scores >= conf
    pred_boxes, pred_labels = det.boxes[keep], det.labels[keep]
    hits = confusions = 0
    if len(boxes) and len(pred_boxes):
        overlap = box_iou(boxes, pred_boxes) >= iou
        same = labels[:, None] == pred_labels[None, :]
        hits = int((overlap & same).any(1).sum())
        confusions = int(((overlap & ~same).any(1) & ~(overlap & same).any(1)).sum())
    return {"hits": hits, "confusions": confusions, "misses": len(boxes) - hits - confusions, "objects": len(boxes)}


def choose_grid(
    index: CocoIndex, detections: dict[int, Detections], count: int, conf: float = 0.25, iou: float = 0.5
) -> list[tuple[int, str]]:
    """``(image id, why it is shown)``: each class at least once, then the worst misses and
    confusions and the best hits, so the grid shows what the model does rather than file order."""
    if count <= 0:
        return []
    stats = {r.id: _outcomes(index, r.id, detections.get(r.id, Detections.empty()), conf, iou) for r in index.images}
    chosen: dict[int, str] = {}
    labels_of = {r.id: {a.label for a in index.annotations[r.id] if not a.iscrowd} for r in index.images}
    for label, name in enumerate(index.class_names):
        holders = [i for i in stats if label in labels_of[i] and i not in chosen]
        if holders and len(chosen) < count:
            best = max(holders, key=lambda i: (stats[i]["hits"], -i))
            st = stats[best]
            extra = f", {st['confusions']} confused" if st["confusions"] else ""
            chosen[best] = f"{name}: {st['hits']}/{st['objects']} found{extra}"
    ranked = [
        ("missed", sorted(stats, key=lambda i: (-stats[i]["misses"], i)), "misses"),
        ("confused", sorted(stats, key=lambda i: (-stats[i]["confusions"], i)), "confusions"),
        ("best hit", sorted(stats, key=lambda i: (-stats[i]["hits"] + stats[i]["misses"], i)), "hits"),
    ]
    while len(chosen) < min(count, len(stats)):
        added = False
        for why, order, key in ranked:
            pick = next((i for i in order if i not in chosen and stats[i][key] > 0), None)
            if pick is not None and len(chosen) < count:
                chosen[pick] = f"{why}: {stats[pick][key]} of {stats[pick]['objects']}"
                added = True
        if not added:  # nothing left that shows anything: the remaining images in order
            for i in [i for i in stats if i not in chosen][: count - len(chosen)]:
                chosen[i] = "no objects" if not stats[i]["objects"] else "other"
            break
    return list(chosen.items())


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


def grid_items(
    index: CocoIndex, detections: dict[int, Detections], ids: Sequence[int], why: dict[int, str] | None = None
) -> list[dict[str, Any]]:
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
                "title": f"{rec.file_name} ({why[image_id]})" if why and image_id in why else rec.file_name,
            }
        )
    return items


def results_detections(results_json: str | os.PathLike, index: CocoIndex, ids: set[int]) -> dict[int, Detections]:
    """The detections a COCO results file gives the images ``ids`` (an image without records has none)."""
    found = read_results_file(
        results_json, [r.id for r in index.images], list(index.label_to_category_id), str(index.annotations_file)
    )
    return {i: found.get(i, Detections.empty()) for i in ids}
