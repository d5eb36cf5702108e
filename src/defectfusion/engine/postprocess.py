"""Model outputs -> detections in pixels of the original images (the original DEIMv2 post-processor)."""

from __future__ import annotations

import torch
from torchvision.ops import box_convert

from ..structures import Detections


def postprocess(logits: torch.Tensor, pred_boxes: torch.Tensor, orig_sizes: torch.Tensor, top_k: int = 300,
                threshold: float = 0.0) -> list[Detections]:
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
    scores = logits.sigmoid().flatten(1)
    k = min(top_k, queries * classes)
    top_scores, index = torch.topk(scores, k, dim=1)
    labels = index % classes
    query = torch.div(index, classes, rounding_mode="floor")
    boxes = box_convert(pred_boxes, "cxcywh", "xyxy")
    boxes = boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
    h, w = orig_sizes[:, 0:1].to(boxes.dtype), orig_sizes[:, 1:2].to(boxes.dtype)
    scale = torch.cat([w, h, w, h], dim=1).unsqueeze(1)
    boxes = boxes * scale
    results = []
    for b in range(batch):
        keep = top_scores[b] >= threshold
        results.append(Detections(boxes[b][keep].float(), top_scores[b][keep].float(), labels[b][keep].long()))
    return results
