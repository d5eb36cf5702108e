"""Typed records passed between the data, model, engine and report layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Detections:
    """Detections for one image, in pixels of the original image.

    Attributes:
        boxes: ``[N, 4]`` float32, ``x1, y1, x2, y2`` in pixels of the original image.
        scores: ``[N]`` float32 confidences in ``[0, 1]``, sorted descending.
        labels: ``[N]`` int64 contiguous class indices (``0 .. C-1``), not COCO category ids.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))

    @classmethod
    def empty(cls) -> Detections:
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
