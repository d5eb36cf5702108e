"""Run a detector over a dataset and score it: preprocess -> inference -> postprocess -> metrics.

:func:`run_validation` scores a model on a training-time loader; :func:`evaluate_on_index` scores
any :class:`~.predictor.Predictor` (PyTorch or ONNX) on a COCO index, image files as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ...data.coco import CocoIndex
from ...models.inference import InputSpec, detect
from ...structures import Detections
from ..prediction.predictor import Predictor
from .evaluator import DetectionEvaluator


def batch_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The model's input from a collated batch: ``pixel_values``, or a cached trunk's ``trunk_features``."""
    if "trunk_features" in batch:
        return {"trunk_features": [t.to(device, non_blocking=True) for t in batch["trunk_features"]]}
    return {"pixel_values": batch["pixel_values"].to(device, non_blocking=True)}


@torch.inference_mode()
def run_validation(
    model: torch.nn.Module,
    loader,
    evaluator: DetectionEvaluator,
    device: torch.device,
    top_k: int = 300,
    progress: bool = False,
    desc: str = "validate",
    autocast: Any = None,
) -> dict[str, Any]:
    """COCO metrics of ``model`` on ``loader`` (batches from :class:`DetectionCollator` or :class:`FeatureCollator`).

    ``autocast``: a context manager the forward passes run in (the training run's precision).
    """
    was_training = model.training
    spec = InputSpec.of(model.meta)
    model.eval()
    evaluator.reset()
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        inputs, sizes = batch_inputs(batch, device), batch["orig_sizes"]
        clipped = detect(model, inputs, sizes, spec, top_k=top_k, forward_context=autocast)
        evaluator.process(batch["image_ids"].tolist(), clipped)
    model.train(was_training)
    return evaluator.evaluate()


def evaluate_on_index(
    predictor: Predictor,
    index: CocoIndex,
    *,
    iou_threshold: float = 0.5,
    conf_threshold: float = 0.25,
    keep: Sequence[int] = (),
    progress: bool | None = None,
    desc: str = "evaluate",
) -> tuple[dict[str, Any], dict[int, Detections]]:
    """Metrics of a predictor on every image of ``index``, and the detections of the ids in ``keep``."""
    evaluator = DetectionEvaluator(index.to_coco_dict(), iou_threshold=iou_threshold, conf_threshold=conf_threshold)
    kept: dict[int, Detections] = {}
    wanted = set(keep)
    paths = [r.path for r in index.images]
    ids = [r.id for r in index.images]
    sizes = [(r.width, r.height) for r in index.images]
    for pred in predictor.predict_files(paths, ids, expected_sizes=sizes, progress=progress, desc=desc):
        evaluator.process([pred.image_id], [pred.detections])
        if pred.image_id in wanted:
            kept[pred.image_id] = pred.detections
    return evaluator.evaluate(all_images=True), kept
