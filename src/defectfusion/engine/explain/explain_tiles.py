"""Explanations of large images, tile by tile at native resolution, stitched back together.

Each tile of :func:`~.tiling.tile_grid` is explained as an image of its own
(:func:`~.explainer.explain_image`); its class maps are placed where the tile lies and averaged
where tiles overlap, its detections shifted into image pixels, and duplicates from the overlaps
removed by class-wise NMS (the tiled predictor's merge). A detection's own maps (the best few of
each tile carry them) are placed on the image the same way, zero outside its tile.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torchvision.ops import batched_nms

from ...structures import DetectionMatch, Explanation
from ..prediction.tiling import tile_grid
from .explainer import explain_image

#: IoU above which two detections of one class from overlapping tiles are the same defect.
MERGE_IOU = 0.5


def _place(part: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """A ``[..., th, tw]`` tile map on a zero ``[..., H, W]`` canvas at ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    canvas = part.new_zeros((*part.shape[:-2], *size))
    canvas[..., y0:y1, x0:x1] = part
    return canvas


def explain_tiled(
    model: Any, image: torch.Tensor, tile: int, overlap: float = 0.2, *, max_detections: int = 8, **kwargs: Any
) -> Explanation:
    """The explanation of a uint8 ``[3, H, W]`` image from its tiles (``kwargs``: of ``explain_image``)."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    size = (height, width)
    grid = tile_grid(height, width, tile, overlap)
    sums: dict[str, torch.Tensor] = {}
    coverage = torch.zeros(size)
    found: list[tuple[DetectionMatch, tuple[int, int, int, int]]] = []
    first = None
    for box in grid:
        x0, y0, x1, y1 = box
        part = explain_image(model, image[:, y0:y1, x0:x1].contiguous(), max_detections=max_detections, **kwargs)
        first = first or part
        coverage[y0:y1, x0:x1] += 1
        for kind, tile_map in {"similarity": part.maps, **part.class_maps}.items():
            placed = sums.setdefault(kind, torch.zeros((tile_map.shape[0], *size)))
            placed[..., y0:y1, x0:x1] += tile_map
        found += [(d, box) for d in part.detections]
    averaged = {kind: total / coverage.clamp(min=1) for kind, total in sums.items()}

    detections: list[DetectionMatch] = []
    if found:
        boxes = torch.tensor([[d.box[0] + b[0], d.box[1] + b[1], d.box[2] + b[0], d.box[3] + b[1]] for d, b in found])
        scores = torch.tensor([d.score for d, _ in found])
        labels = torch.tensor([d.label for d, _ in found])
        for i in batched_nms(boxes, scores, labels, MERGE_IOU)[:max_detections].tolist():
            match, box = found[i]
            maps = {kind: _place(m, box, size) for kind, m in match.maps.items()}
            detections.append(replace(match, box=[float(v) for v in boxes[i].tolist()], maps=maps))
    return replace(
        first,
        image=image.permute(1, 2, 0).cpu().numpy(),
        maps=averaged["similarity"],
        level_maps=[],  # per tile only: feature levels of different crops do not stitch
        detections=detections,
        class_maps=averaged,
    )
