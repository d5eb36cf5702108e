"""Model outputs -> detections in pixels of the original images (the original DEIMv2 post-processor)."""

from __future__ import annotations

import torch

from ..models.postprocess import query_boxes_in_pixels, top_k_queries
from ..structures import Detections


def postprocess(
    logits: torch.Tensor, pred_boxes: torch.Tensor, orig_sizes: torch.Tensor, top_k: int = 300, threshold: float = 0.0
) -> list[Detections]:
    """Top-k over all (query, class) pairs, as DEIMv2 does with sigmoid scores.

    Args:
        logits: ``[B, Q, C]`` class logits.
        pred_boxes: ``[B, Q, 4]`` normalised ``cx, cy, w, h``.
        orig_sizes: ``[B, 2]`` original image sizes ``(H, W)``.
        top_k: detections kept per image before the threshold (capped at ``Q * C``).
        threshold: minimum score.

    Returns:
        One :class:`Detections` per image: boxes ``xyxy`` in original pixels, sorted by score.
    """
    batch, queries, classes = logits.shape
    top_scores, labels, query = top_k_queries(logits, min(top_k, queries * classes))
    boxes = query_boxes_in_pixels(pred_boxes, query, orig_sizes)
    results = []
    for b in range(batch):
        keep = top_scores[b] >= threshold
        results.append(Detections(boxes[b][keep].float(), top_scores[b][keep].float(), labels[b][keep].long()))
    return results


def clip_to_image(boxes: torch.Tensor, size: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    """``[N, 4]`` xyxy boxes clipped to an image of ``size`` ``(H, W)`` pixels.

    The original DEIMv2 post-processor returns boxes as regressed, partly outside the image
    (``y = -15.9`` seen); predictions and evaluation clip them, as COCO's annotations are. The ONNX
    graph keeps the original's unclipped outputs; the predictor clips for every backend.
    """
    height, width = (float(v) for v in (size.tolist() if isinstance(size, torch.Tensor) else size))
    limit = boxes.new_tensor([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), limit)
