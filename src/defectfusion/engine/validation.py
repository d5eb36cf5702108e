"""Run a detector over a dataset and score it: preprocess -> inference -> postprocess -> metrics."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from .evaluator import DetectionEvaluator
from .postprocess import postprocess


@torch.inference_mode()
def run_validation(model: torch.nn.Module, loader, evaluator: DetectionEvaluator, device: torch.device,
                   top_k: int = 300, progress: bool = False, desc: str = "validate") -> dict[str, Any]:
    """COCO metrics of ``model`` on ``loader`` (batches from :class:`DetectionCollator`)."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        outputs = model(pixel_values=batch["pixel_values"].to(device, non_blocking=True))
        detections = postprocess(outputs.logits.float(), outputs.pred_boxes.float(),
                                 batch["orig_sizes"].to(device), top_k=top_k)
        evaluator.process(batch["image_ids"].tolist(), [d.to("cpu") for d in detections])
    model.train(was_training)
    return evaluator.evaluate()
