"""Sliced (tiled) inference: small defects on large images, found at native resolution.

A detector trained at e.g. 256 px sees a 2048 px image shrunk 8x, where a 20 px defect becomes
2-3 px. :class:`TiledPredictor` wraps any :class:`~.predictor.Predictor` (PyTorch or ONNX
backend alike): it cuts each image into overlapping ``tile`` x ``tile`` crops (the grid of
``sahi.slicing.get_slice_bboxes``: border tiles shifted inward, so every tile is full-size when
the image is at least that large), runs the predictor on the crops in batches, shifts the boxes
back to image pixels, optionally adds the predictor's usual whole-image (resized) pass, and merges
the duplicates that overlapping tiles produce: class-wise NMS (``torchvision.ops.batched_nms``,
IoU) by default, or SAHI's greedy non-maximum merging (``sahi.postprocess.combine``'s
``batched_greedy_nmm``: a lower-scored box matching a kept one, by IoU or IoS, is merged into it;
the merged box is their union and keeps the higher score, as SAHI's ``GreedyNMMPostprocess`` does).

Why not SAHI's ``DetectionModel`` + ``get_sliced_prediction``: that interface predicts one tile
at a time through ``perform_inference`` on numpy images and rebuilds every box as a Python
``ObjectPrediction``; our predictor already batches tiles, thresholds and clips in tensors, and
serves PyTorch and ONNX backends through one object. So SAHI supplies the tile grid and the
merging kernel, and detections stay :class:`~defectfusion.structures.Detections` throughout.
SAHI is an optional extra: ``pip install 'defectfusion[tiles]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import batched_nms

from ...data.images import as_image, load_image
from ...errors import ConfigError
from ...structures import Detections
from .predictor import ImagePrediction, Predictor, image_predictions

__all__ = ["MERGES", "TiledPredictor", "merge_detections", "tile_grid"]

MERGES = ("nms", "nmm")


def _sahi(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"tiled inference needs sahi, which is not installed ({e}): pip install 'defectfusion[tiles]'"
        ) from e


def check_tiling(tile: int, overlap: float) -> None:
    """A tile side of at least 32 px and an overlap fraction in ``[0, 1)``, else :class:`ConfigError`."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 32:
        raise ConfigError(f"tile size must be an integer of at least 32 pixels, got {tile!r}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"tile overlap must be a fraction in [0, 1), got {overlap}")


def tile_grid(height: int, width: int, tile: int, overlap: float = 0.2) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles ``(x0, y0, x1, y1)`` (pixels, exclusive ends) covering a ``height x width`` image.

    Neighbours overlap by ``overlap * tile`` px; the last row and column are shifted inward so
    every tile is ``tile`` px wide and high (an image smaller than ``tile`` along a side gets
    tiles as long as that side).
    """
    check_tiling(tile, overlap)
    slicing = _sahi("sahi.slicing")
    boxes = slicing.get_slice_bboxes(
        int(height),
        int(width),
        slice_height=tile,
        slice_width=tile,
        auto_slice_resolution=False,
        overlap_height_ratio=overlap,
        overlap_width_ratio=overlap,
    )
    # sahi clips the far ends to the image; dedupe the repeats a small image gives
    tiles = ((int(x0), int(y0), min(int(x1), width), min(int(y1), height)) for x0, y0, x1, y1 in boxes)
    return list(dict.fromkeys(tiles))


def merge_detections(dets: Detections, method: str = "nms", iou: float = 0.5, metric: str = "IOS") -> Detections:
    """Duplicates of one class merged: ``"nms"`` keeps the best box of each overlapping group (IoU
    above ``iou``); ``"nmm"`` merges each group into the union of its boxes with the best score
    (SAHI's greedy NMM, matching by ``metric``: ``"IOU"`` or ``"IOS"``, intersection over the
    smaller box, which also catches a box cut by a tile border). Scores come out descending."""
    if method not in MERGES:
        raise ConfigError(f"merge must be one of {list(MERGES)}, got {method!r}")
    if len(dets) == 0:
        return dets
    boxes, scores, labels = dets.boxes.float(), dets.scores.float(), dets.labels.long()
    if method == "nms":
        keep = batched_nms(boxes, scores, labels, iou)
        return Detections(boxes[keep], scores[keep], labels[keep])
    combine = _sahi("sahi.postprocess.combine")
    table = torch.cat([boxes, scores[:, None], labels[:, None].float()], 1).numpy()
    groups = combine.batched_greedy_nmm(table, match_metric=metric, match_threshold=iou)
    keep = sorted(groups, key=lambda k: -float(scores[k]))
    merged = torch.stack([_union(boxes[[k, *groups[k]]]) for k in keep])
    return Detections(merged, scores[keep], labels[keep])


def _union(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[:, :2].min(0).values, boxes[:, 2:].max(0).values])


def _concat(parts: Sequence[Detections]) -> Detections:
    if not parts:
        return Detections.empty()
    return Detections(
        torch.cat([p.boxes.float() for p in parts]),
        torch.cat([p.scores.float() for p in parts]),
        torch.cat([p.labels.long() for p in parts]),
    )


class TiledPredictor:
    """A :class:`~.predictor.Predictor` run on overlapping tiles of each image (see the module docstring).

    Same calling shape as the predictor: ``__call__(images) -> list[Detections]`` and
    :meth:`predict_files`, with boxes in the input image's pixels, so ``predict`` can use either.

    Args:
        predictor: what runs on each tile (its threshold and per-tile NMS apply per tile; its
            ``batch_size`` is the tiles per backend call).
        tile: tile side in pixels, cut at native resolution (the predictor resizes each tile to
            its model size, so a tile about the model's input size keeps pixels 1:1).
        overlap: fraction of the tile shared with each neighbour.
        full_image: also run the predictor on the whole image (resized), for objects larger than a tile.
        merge: ``"nms"`` (class-wise NMS) or ``"nmm"`` (SAHI's greedy non-maximum merging).
        merge_iou: the overlap above which two detections of a class are duplicates.
        merge_metric: ``"IOS"`` or ``"IOU"``, for ``"nmm"`` (NMS always uses IoU).
    """

    def __init__(
        self,
        predictor: Predictor,
        tile: int,
        overlap: float = 0.2,
        *,
        full_image: bool = False,
        merge: str = "nms",
        merge_iou: float = 0.5,
        merge_metric: str = "IOS",
    ) -> None:
        check_tiling(tile, overlap)
        if merge not in MERGES:
            raise ConfigError(f"merge must be one of {list(MERGES)}, got {merge!r}")
        if not 0.0 < merge_iou <= 1.0 or merge_metric not in ("IOS", "IOU"):
            raise ConfigError(f"merge overlap must be in (0, 1] with metric IOS or IOU, got {merge_iou} {merge_metric}")
        _sahi("sahi.slicing")  # fail now, not on the first image
        self.predictor = predictor
        self.tile = int(tile)
        self.overlap = float(overlap)
        self.full_image = bool(full_image)
        self.merge = merge
        self.merge_iou = float(merge_iou)
        self.merge_metric = merge_metric

    # what callers of a Predictor read and set
    @property
    def class_names(self) -> list[str]:
        return self.predictor.class_names

    @property
    def category_ids(self) -> list[int] | None:
        return self.predictor.category_ids

    @property
    def model(self) -> torch.nn.Module | None:
        return self.predictor.model

    @property
    def threshold(self) -> float:
        return self.predictor.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.predictor.threshold = float(value)

    def predict_image(self, image: torch.Tensor) -> Detections:
        """Detections of one uint8 ``[3, H, W]`` image, in its pixels, merged across tiles."""
        height, width = int(image.shape[-2]), int(image.shape[-1])
        tiles = tile_grid(height, width, self.tile, self.overlap)
        parts: list[Detections] = []
        step = self.predictor.batch_size
        for start in range(0, len(tiles), step):
            chunk = tiles[start : start + step]
            crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in chunk]
            for det, (x0, y0, _, _) in zip(self.predictor(crops), chunk, strict=True):
                shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
                parts.append(Detections(det.boxes.float() + shift, det.scores, det.labels))
        if self.full_image:
            parts += self.predictor([image])
        return merge_detections(_concat(parts), self.merge, self.merge_iou, self.merge_metric)

    def __call__(self, images: Sequence[Any]) -> list[Detections]:
        """Detections of images in memory (uint8 ``[3, H, W]`` tensors, arrays, PIL images) or paths."""
        return [self.predict_image(as_image(im)) for im in images]

    def predict_files(
        self,
        paths: Sequence[str | os.PathLike],
        image_ids: Sequence[int] | None = None,
        *,
        expected_sizes: Sequence[tuple[int, int] | None] | None = None,
        progress: bool | None = None,
        desc: str = "predict (tiled)",
    ) -> Iterator[ImagePrediction]:
        """One :class:`~.predictor.ImagePrediction` per file, in order (as :meth:`Predictor.predict_files`)."""
        paths = [Path(p) for p in paths]
        sizes = list(expected_sizes) if expected_sizes is not None else [None] * len(paths)

        def one_by_one() -> Iterator[list[tuple[int, tuple[int, int], Detections]]]:
            for i, (path, size) in enumerate(zip(paths, sizes, strict=True)):
                image = load_image(path, expected_size=size).as_subclass(torch.Tensor)
                yield [(i, (int(image.shape[-2]), int(image.shape[-1])), self.predict_image(image))]

        yield from image_predictions(paths, image_ids, one_by_one(), progress, desc)
