"""The report's prediction grid shows the model: every class, the worst misses, confusions and best hits."""

from __future__ import annotations

import torch

from defectfusion.commands.grid import choose_grid, grid_ids
from defectfusion.data.coco import load_coco
from defectfusion.structures import Detections


def _perfect(index, image_id, relabel=None):
    boxes, labels = index.training_targets(image_id)
    if relabel is not None:
        labels = (labels + 1) % index.num_classes
    return Detections(boxes, torch.full((len(labels),), 0.9), labels)


def test_the_grid_covers_every_class_and_says_why_each_image_is_there(kit):
    index = load_coco(kit.val_ann)
    ids = [r.id for r in index.images]
    with_objects = [i for i in ids if index.annotations[i]]
    detections = {i: _perfect(index, i) for i in with_objects[: len(with_objects) // 2]}  # found
    missed, confused = with_objects[-1], with_objects[-2]
    detections[confused] = _perfect(index, confused, relabel=True)  # every object called another class
    chosen = dict(choose_grid(index, detections, count=len(index.class_names) + 3))
    present = {a.label for i in ids for a in index.annotations[i]}
    shown = {a.label for i in chosen for a in index.annotations[i]}
    assert present <= shown  # each class at least once
    assert any(why.startswith("missed") for why in chosen.values())
    assert "confused" in chosen.get(confused, "")  # shown, and said why
    assert all(why for why in chosen.values()) and len(chosen) == len(set(chosen))
    assert missed in chosen or any(w.startswith("missed") for w in chosen.values())


def test_before_predicting_the_grid_still_covers_every_class(kit):
    index = load_coco(kit.val_ann)
    chosen = grid_ids(index, ("ROTURA_FRACTURA", "RAYONES_ARANAZOS"), count=6)
    present = {a.label for r in index.images for a in index.annotations[r.id]}
    assert len(present & {a.label for i in chosen for a in index.annotations[i]}) == min(6, len(present))
