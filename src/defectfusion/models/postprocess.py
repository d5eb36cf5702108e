"""Model outputs -> detections in pixels of the original images (the original DEIMv2 post-processor).

Its core (top-k over (query, class) pairs, boxes in pixels) is written with export-friendly
operations only (no ``%``, no torchvision box ops), so the same code serves eager inference,
the explainer and the ONNX graph of :class:`~.deploy.DeployDetector`.
"""

from __future__ import annotations

import torch

from ..structures import Detections


def top_k_queries(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` best (query, class) pairs by sigmoid score, best first.

    Args:
        logits: ``[B, Q, C]`` class logits.
        k: pairs kept per image (at most ``Q * C``).

    Returns:
        ``scores [B, k]``, ``labels [B, k]`` (class index) and ``queries [B, k]`` (query index).
    """
    classes = logits.shape[-1]
    scores, index = torch.topk(torch.sigmoid(logits).flatten(1), k, dim=1)
    queries = torch.div(index, classes, rounding_mode="floor")
    return scores, index - queries * classes, queries


def query_boxes_in_pixels(pred_boxes: torch.Tensor, queries: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """``[B, k, 4]`` ``x1, y1, x2, y2`` pixels of the chosen queries' boxes.

    Args:
        pred_boxes: ``[B, Q, 4]`` normalised ``cx, cy, w, h``.
        queries: ``[B, k]`` query indexes (from :func:`top_k_queries`).
        sizes: ``[B, 2]`` image sizes ``(H, W)`` to scale to, on any device (moved to the boxes').
    """
    cx, cy, w, h = pred_boxes.unbind(-1)
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    boxes = boxes.gather(1, queries.unsqueeze(-1).expand(-1, -1, 4))
    sizes = sizes.to(device=boxes.device, dtype=boxes.dtype)  # sizes often come from the CPU
    height, width = sizes[:, 0:1], sizes[:, 1:2]
    return boxes * torch.cat([width, height, width, height], dim=1).unsqueeze(1)


def postprocess(
    logits: torch.Tensor, pred_boxes: torch.Tensor, orig_sizes: torch.Tensor, top_k: int = 300, threshold: float = 0.0
) -> list[Detections]:
    """Top-k over all (query, class) pairs, as DEIMv2 does with sigmoid scores.

    Args:
        logits: ``[B, Q, C]`` class logits.
        pred_boxes: ``[B, Q, 4]`` normalised ``cx, cy, w, h``.
        orig_sizes: ``[B, 2]`` original image sizes ``(H, W)``, on any device.
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
