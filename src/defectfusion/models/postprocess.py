"""The original DEIMv2 post-processor's core: top-k over (query, class) pairs, boxes in pixels.

Written with export-friendly operations only (no ``%``, no torchvision box ops), so the same
code serves eager inference, the explainer and the ONNX graph of :class:`~.deploy.DeployDetector`.
"""

from __future__ import annotations

import torch


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
        sizes: ``[B, 2]`` image sizes ``(H, W)`` to scale to.
    """
    cx, cy, w, h = pred_boxes.unbind(-1)
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    boxes = boxes.gather(1, queries.unsqueeze(-1).expand(-1, -1, 4))
    sizes = sizes.to(boxes.dtype)
    height, width = sizes[:, 0:1], sizes[:, 1:2]
    return boxes * torch.cat([width, height, width, height], dim=1).unsqueeze(1)
