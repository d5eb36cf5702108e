"""Training-time validation and the file predictor take one road: they score a model alike."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from defectfusion.data.coco import CocoDetection, load_coco
from defectfusion.data.transforms import DetectionCollator, build_eval_transform
from defectfusion.engine.evaluation.evaluator import DetectionEvaluator
from defectfusion.engine.evaluation.validation import evaluate_on_index, run_validation
from defectfusion.engine.prediction.predictor import Predictor
from defectfusion.models.checkpoint import load_detector
from defectfusion.models.inference import InputSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_loader_of_the_validation_set_and_its_image_files_give_the_same_metrics(kit):
    model = load_detector(kit.fused)
    index = load_coco(kit.val_ann)
    spec = InputSpec.of(model.meta)
    dataset = CocoDetection(index, build_eval_transform(spec.size, spec.resize))
    loader = DataLoader(dataset, batch_size=8, collate_fn=DetectionCollator(spec.mean, spec.std))
    evaluator = DetectionEvaluator(index.to_coco_dict())
    model.train()  # as a trainer holds it
    from_loader = run_validation(model, loader, evaluator, torch.device("cpu"))
    assert model.training  # given back in the mode it came in
    first = index.images[0].id
    from_files, kept = evaluate_on_index(Predictor.from_model(model), index, keep=[first], progress=False)
    assert from_loader.num_detections == from_files.num_detections > 0
    assert from_loader.map50 == pytest.approx(from_files.map50, abs=1e-6)
    assert from_loader.map == pytest.approx(from_files.map, abs=1e-6)
    assert list(kept) == [first] and len(kept[first]) > 0
