"""COCO's matching, batched: IoU to the bit of pycocotools, the greedy rule, crowd regions reused."""

from __future__ import annotations

import numpy as np
import torch

from defectfusion.engine.evaluation.coco_matching import (
    IOU_THRESHOLDS,
    MAX_DETECTIONS,
    coco_iou,
    ground_truth,
    image_class_pairs,
    match_pairs,
)
from defectfusion.engine.evaluation.evaluator import DetectionEvaluator
from defectfusion.structures import Detections


def test_iou_equals_pycocotools_bit_for_bit_with_crowd_boxes():
    from pycocotools import mask

    rng = np.random.default_rng(0)
    dt = np.concatenate([rng.uniform(0, 50, (40, 2)), rng.uniform(1, 30, (40, 2))], axis=1)
    gt = np.concatenate([rng.uniform(0, 50, (25, 2)), rng.uniform(1, 30, (25, 2))], axis=1)
    crowd = rng.random(25) < 0.3
    expected = mask.iou(dt.tolist(), gt.tolist(), crowd.astype(np.uint8).tolist())
    assert np.array_equal(coco_iou(dt, gt, crowd), expected)


def _matched(gt_boxes, crowd, det_boxes, scores):
    annotations = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": int(c)}
        for i, (b, c) in enumerate(zip(gt_boxes, crowd, strict=True))
    ]
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "crack"}],
        "annotations": annotations,
    }
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in det_boxes], dtype=torch.float64)
    det = Detections(xyxy, torch.tensor(scores, dtype=torch.float64), torch.zeros(len(scores), dtype=torch.long))
    pairs = image_class_pairs(ground_truth(DetectionEvaluator(gt)), {1: det})
    match_pairs(pairs)
    [pair] = pairs
    return pair.status  # [T, D] in score order


def test_the_better_scored_detection_takes_the_box_and_the_other_is_a_false_positive():
    status = _matched([[10, 10, 20, 20]], [False], [[11, 11, 20, 20], [10, 10, 20, 20]], [0.4, 0.9])
    assert status.shape == (len(IOU_THRESHOLDS), 2)
    assert (status[:, 0] == 1).all()  # the exact box, scored 0.9: a hit at every threshold
    assert (status[:, 1] == 0).all()  # the 0.4 one came second: the box was taken


def test_a_crowd_region_takes_every_detection_on_it_as_ignored():
    status = _matched([[0, 0, 60, 60]], [True], [[5, 5, 20, 20], [30, 30, 20, 20]], [0.9, 0.8])
    assert (status[0] == -1).all()  # intersection over the detection's area is 1 for both


def test_at_most_100_detections_of_a_class_are_kept_per_image():
    boxes = [[i % 90, 0, 5, 5] for i in range(MAX_DETECTIONS + 20)]
    status = _matched([[0, 0, 5, 5]], [False], boxes, list(np.linspace(1.0, 0.1, len(boxes))))
    assert status.shape[1] == MAX_DETECTIONS
