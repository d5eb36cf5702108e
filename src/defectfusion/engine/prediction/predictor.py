"""Prediction: preprocess -> inference -> postprocess, returning typed detections per image.

:class:`Predictor` wraps a *backend*, any callable ``(pixel_values [B, 3, H, W] float32,
orig_sizes [B, 2] int64 (H, W)) -> list[Detections]`` in original-image pixels. The PyTorch
backend (:class:`TorchBackend`) runs a detector folder; an exported ``.onnx`` file runs through
:class:`~.onnx_backend.OnnxDetector`. Preprocessing (:func:`prepare_images`) is exactly the
validation pipeline's (``build_eval_transform`` + ``DetectionCollator``'s normalisation), so a
model scores the same through ``predict``, ``evaluate`` and training-time validation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ...data.coco import CocoIndex
from ...data.images import as_image, load_image
from ...data.transforms import build_eval_transform
from ...errors import DataError
from ...models.checkpoint import load_detector
from ...models.inference import (
    InputSpec,
    check_thresholds,
    decode,
    finish,
    normalize,
    postprocess_sizes,
    prepare_images,
)
from ...structures import Detections
from .onnx_backend import OnnxDetector, is_onnx_checkpoint

__all__ = [
    "Backend",
    "TorchBackend",
    "ImagePrediction",
    "Predictor",
    "to_coco_results",
]

#: Above this many images a progress bar is shown (unless ``progress`` says otherwise).
PROGRESS_FROM = 16

Backend = Callable[[torch.Tensor, torch.Tensor], list[Detections]]


class TorchBackend:
    """A PyTorch detector as a backend: model outputs -> top-k (query x class) -> pixel boxes.

    Args:
        model: a ``Deimv2ForObjectDetection`` (e.g. :class:`~defectfusion.models.detector.DefectDetector`).
        device: where the model runs.
        top_k: detections kept per image before any score threshold.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", top_k: int = 300) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.top_k = int(top_k)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor, orig_sizes: torch.Tensor) -> list[Detections]:
        outputs = self.model(pixel_values=pixel_values.to(self.device, non_blocking=True))
        return decode(outputs, orig_sizes.to(self.device), self.top_k)


@dataclass
class ImagePrediction:
    """The detections of one image.

    Attributes:
        path: the image file.
        size: ``(H, W)`` of the original image.
        detections: boxes ``[N, 4]`` xyxy in original pixels, scores ``[N]`` (descending),
            contiguous labels ``[N]``; only detections with ``score >= threshold``.
        image_id: the COCO image id (from the annotations, else the 1-based input position).
    """

    path: Path
    size: tuple[int, int]
    detections: Detections
    image_id: int


def image_ids_for(paths: Sequence[Any], image_ids: Sequence[int] | None) -> list[int]:
    """The COCO image id of each path: ``image_ids`` as given (one per path), else 1, 2, ... in order."""
    ids = list(image_ids) if image_ids is not None else list(range(1, len(paths) + 1))
    if len(ids) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(ids)} image ids")
    return ids


class _ImageFiles(Dataset):
    """Images read and resized for the model: ``(uint8 [3, h, w] at the model size, (H, W), index)``."""

    def __init__(
        self, paths: Sequence[Path], spec: InputSpec, expected_sizes: Sequence[tuple[int, int] | None] | None = None
    ) -> None:
        self.paths = list(paths)
        self.expected = list(expected_sizes) if expected_sizes is not None else [None] * len(self.paths)
        self.transform = build_eval_transform(spec.size, spec.resize)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[int, int], int]:
        image = load_image(self.paths[i], expected_size=self.expected[i])
        size = (int(image.shape[-2]), int(image.shape[-1]))
        return self.transform(image).as_subclass(torch.Tensor), size, i


def _collate(batch: list[tuple[torch.Tensor, tuple[int, int], int]]):
    return (
        torch.stack([b[0] for b in batch]),
        torch.tensor([b[1] for b in batch], dtype=torch.int64),
        [b[2] for b in batch],
    )


class Predictor:
    """Preprocess -> inference -> postprocess over image files, in batches.

    Args:
        backend: ``(pixel_values, orig_sizes (H, W)) -> list[Detections]`` in original pixels.
        class_names: name of each contiguous label.
        spec: what the model takes (:class:`~defectfusion.models.inference.InputSpec`: size, normalisation,
            resize); a bare ``(H, W)`` means no normalisation and the plain resize.
        threshold: keep detections with ``score >= threshold``.
        batch_size: images per backend call.
        num_workers: image-loading worker processes (0: in this process).
        category_ids: the dataset's COCO category id of each label, when the model remembers them.
        nms_iou: class-wise non-maximum suppression at this IoU (None: off, as mAP files should be).
    """

    def __init__(
        self,
        backend: Backend,
        class_names: Sequence[str],
        spec: InputSpec | Sequence[int],
        *,
        threshold: float = 0.0,
        batch_size: int = 8,
        num_workers: int = 0,
        category_ids: Sequence[int] | None = None,
        nms_iou: float | None = None,
    ) -> None:
        check_thresholds(threshold, nms_iou)
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        self.backend = backend
        self.class_names = list(class_names)
        self.spec = spec if isinstance(spec, InputSpec) else InputSpec((int(spec[0]), int(spec[1])))
        self.threshold = float(threshold)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.nms_iou = nms_iou

    @property
    def image_size(self) -> tuple[int, int]:
        return self.spec.size

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        *,
        device: str | torch.device = "cpu",
        top_k: int = 300,
        spec: InputSpec | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """A predictor for an in-memory detector (it carries its classes and input settings in ``.meta``;
        ``spec`` prepares the images otherwise)."""
        kwargs.setdefault("category_ids", getattr(model.meta, "category_ids", None))
        spec = spec or InputSpec.of(model.meta)
        return cls(TorchBackend(model, device, top_k), model.class_names, spec, **kwargs)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu", top_k: int = 300, **kwargs: Any
    ) -> Predictor:
        """A detector folder (PyTorch) or an exported ``.onnx`` file."""
        path = Path(checkpoint).expanduser()
        if is_onnx_checkpoint(path):
            onnx = OnnxDetector(path)
            kwargs.setdefault("category_ids", onnx.category_ids)
            return cls(onnx, onnx.class_names, InputSpec.of(onnx), **kwargs)
        return cls.from_model(load_detector(path, device=device), device=device, top_k=top_k, **kwargs)

    @property
    def model(self) -> torch.nn.Module | None:
        """The PyTorch detector behind a :class:`TorchBackend`; None for other backends (ONNX)."""
        return self.backend.model if isinstance(self.backend, TorchBackend) else None

    # ------------------------------------------------------------------ the three steps

    def preprocess(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``[3, H, W]`` images -> (``pixel_values [B, 3, h, w]`` normalised, ``orig_sizes [B, 2]`` (H, W))."""
        return prepare_images(images, self.spec)

    def infer(self, pixel_values: torch.Tensor, orig_sizes: torch.Tensor) -> list[Detections]:
        """Run the backend and keep detections at or above the threshold."""
        found = self.backend(pixel_values, postprocess_sizes(orig_sizes, self.spec))
        return finish(found, orig_sizes, self.spec, self.threshold, self.nms_iou)

    def __call__(self, images: Sequence[Any]) -> list[Detections]:
        """Detections of images already in memory (uint8 ``[3, H, W]`` tensors, arrays, PIL images) or paths."""
        return self.infer(*self.preprocess([as_image(im) for im in images]))

    def predict_files(
        self,
        paths: Sequence[str | os.PathLike],
        image_ids: Sequence[int] | None = None,
        *,
        expected_sizes: Sequence[tuple[int, int] | None] | None = None,
        progress: bool | None = None,
        desc: str = "predict",
    ) -> Iterator[ImagePrediction]:
        """Yield one :class:`ImagePrediction` per file, in order.

        ``expected_sizes``: ``(width, height)`` per file from an annotations file (checked on
        load). ``progress``: a bar; ``None`` shows one above :data:`PROGRESS_FROM` images.
        """
        paths = [Path(p) for p in paths]
        loader = DataLoader(
            _ImageFiles(paths, self.spec, expected_sizes),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )

        def batches() -> Iterator[list[tuple[int, tuple[int, int], Detections]]]:
            for pixels, sizes, indices in loader:
                found = self.infer(normalize(pixels, self.spec.mean, self.spec.std), sizes)
                yield [(i, (h, w), det) for i, det, (h, w) in zip(indices, found, sizes.tolist(), strict=True)]

        yield from image_predictions(paths, image_ids, batches(), progress, desc)


def image_predictions(
    paths: Sequence[Path],
    image_ids: Sequence[int] | None,
    batches: Iterable[list[tuple[int, tuple[int, int], Detections]]],
    progress: bool | None,
    desc: str,
) -> Iterator[ImagePrediction]:
    """The files' :class:`ImagePrediction` in order, from ``batches`` of ``(position, (H, W), detections)``,
    with the image ids (:func:`image_ids_for`) and a progress bar: what every ``predict_files`` yields."""
    ids = image_ids_for(paths, image_ids)
    show = len(paths) > PROGRESS_FROM if progress is None else progress
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not show, dynamic_ncols=True, leave=False) as bar:
        for batch in batches:
            for i, size, det in batch:
                yield ImagePrediction(paths[i], size, det, ids[i])
            bar.update(len(batch))


def to_coco_results(
    predictions: Sequence[ImagePrediction], category_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """COCO results records (``bbox`` as ``[x, y, w, h]`` pixels), best score first within each image.

    Full float precision: scoring the file gives the checkpoint's own metrics (rounding boxes and
    scores reorders near-tied detections and moved mAP by 1e-5 in a test).
    """
    records = []
    for pred in predictions:
        records += _coco_records(pred.image_id, pred.detections, category_ids, digits=None)
    return records


def detections_to_coco(detections: dict[int, Detections], index: CocoIndex) -> list[dict[str, Any]]:
    """COCO results of detections by image id, at full precision and with the dataset's category ids
    (:func:`~defectfusion.engine.evaluation.results_file.read_results_file` reads them back to the same numbers)."""
    records = []
    for image_id, det in detections.items():
        records += _coco_records(image_id, det, index.label_to_category_id, digits=None)
    return records


def _float32_text(value: float) -> float:
    return float(str(np.float32(value)))


def _coco_records(
    image_id: int, det: Detections, category_ids: Sequence[int] | None, digits: int | None
) -> list[dict[str, Any]]:
    # full precision: the shortest decimal that reads back to the same float32 (0.9, not 0.8999999761581421)
    keep = (lambda v: round(v, digits)) if digits is not None else _float32_text  # noqa: E731
    score = (lambda v: round(float(v), digits + 2)) if digits is not None else _float32_text  # noqa: E731
    out = []
    for box, s, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
        x1, y1, x2, y2 = box
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_ids[label] if category_ids is not None else label),
                "bbox": [keep(x1), keep(y1), keep(x2 - x1), keep(y2 - y1)],
                "score": score(s),
            }
        )
    return out
