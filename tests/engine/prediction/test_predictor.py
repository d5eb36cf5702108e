"""Predictor: the validation pipeline's preprocessing and postprocessing, whatever the backend."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from defectfusion.data.coco import CocoDetection, load_coco
from defectfusion.data.transforms import DetectionCollator, build_eval_transform
from defectfusion.engine.prediction.predictor import Predictor, TorchBackend
from defectfusion.errors import DataError
from defectfusion.models.checkpoint import load_detector


def test_predictor_computes_what_the_validation_loader_computes(kit):
    model = load_detector(kit.fused)
    index = load_coco(kit.val_ann)
    collator = DetectionCollator(model.meta.image_mean, model.meta.image_std)
    loader = DataLoader(
        CocoDetection(index, build_eval_transform(model.meta.image_size)), batch_size=3, collate_fn=collator
    )
    backend = TorchBackend(model, top_k=50)
    expected = {}
    for batch in loader:
        for i, det in zip(
            batch["image_ids"].tolist(), backend(batch["pixel_values"], batch["orig_sizes"]), strict=True
        ):
            expected[i] = det
    predictor = Predictor.from_model(model, top_k=50, batch_size=5)
    preds = list(predictor.predict_files([r.path for r in index.images], [r.id for r in index.images]))
    assert [p.image_id for p in preds] == [r.id for r in index.images]
    for p in preds:
        e = expected[p.image_id]
        assert p.size == (96, 96)
        torch.testing.assert_close(p.detections.boxes, e.boxes)
        torch.testing.assert_close(p.detections.scores, e.scores)
        assert torch.equal(p.detections.labels, e.labels)
        assert p.detections.boxes.min() >= 0 and p.detections.boxes.max() <= 96


def test_bad_threshold_and_batch_size_are_rejected():
    with pytest.raises(DataError, match=r"threshold must be in \[0, 1\], got 1.5"):
        Predictor(lambda *_: [], ["a"], (32, 32), threshold=1.5)
    with pytest.raises(DataError, match="batch size must be at least 1"):
        Predictor(lambda *_: [], ["a"], (32, 32), batch_size=0)
