"""Prediction: preprocess -> inference -> postprocess, returning typed detections per image.

:class:`Predictor` wraps a *backend*, any callable ``(pixel_values [B, 3, H, W] float32,
orig_sizes [B, 2] int64 (H, W)) -> list[Detections]`` in original-image pixels. The PyTorch
backend (:class:`TorchBackend`) runs a detector folder; an ONNX file runs through
``engine.onnx_backend.OnnxDetector`` when that module is installed. Preprocessing is exactly the
validation pipeline's (``build_eval_transform`` + ``DetectionCollator``'s normalisation), so a
model scores the same through ``predict``, ``evaluate`` and training-time validation.

:func:`predict` is the ``defectfusion predict`` engine: it expands files, folders and glob
patterns, runs the predictor in batches (with a progress bar on many images), and writes

    <out>/results.json       COCO results: [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]
    <out>/predictions.json   per image: id, file, size, detections (xyxy pixels, class names, scores)
    <out>/images/<name>      each image with its boxes, class names and scores drawn (images whose
                             longer side is under 640 px are drawn enlarged to 640 px)

COCO ``category_id``: the model only knows contiguous labels ``0 .. C-1``. With an annotations file
(its ``categories`` matched by name) or an explicit mapping, the dataset's ids are written;
otherwise the id is the label.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.coco import read_categories
from ..data.images import load_image
from ..data.transforms import build_eval_transform
from ..errors import CheckpointError, DataError
from ..io import atomic_path, atomic_write_json
from ..structures import Detections
from .postprocess import postprocess

__all__ = [
    "IMAGE_EXTENSIONS",
    "Backend",
    "TorchBackend",
    "ImagePrediction",
    "Predictor",
    "PredictionRun",
    "collect_images",
    "resolve_category_ids",
    "to_coco_results",
    "predict",
    "load_onnx_backend",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: Above this many images a progress bar is shown (unless ``progress`` says otherwise).
PROGRESS_FROM = 16
#: Images smaller than this (longer side, pixels) are drawn enlarged to it, so labels stay legible.
DRAW_MIN_SIDE = 640

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
        detections = postprocess(outputs.logits.float(), outputs.pred_boxes.float(), orig_sizes.to(self.device),
                                 top_k=self.top_k)
        return [d.to("cpu") for d in detections]


def _onnx_module():
    try:
        from . import onnx_backend  # provided by the ONNX export work
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith("onnx_backend"):
            return None
        raise CheckpointError(
            f"ONNX inference needs the package {exc.name!r}, which is not installed: pip install 'defectfusion[export]'"
        ) from None
    return onnx_backend


def _looks_onnx(path: Path) -> bool:
    if path.suffix.lower() == ".onnx":
        return True
    module = _onnx_module() if path.is_file() else None
    return bool(module is not None and module.is_onnx_checkpoint(path))


def load_onnx_backend(path: str | os.PathLike):
    """An ``OnnxDetector`` for an exported model (``.class_names``, ``.image_size``, ``.image_mean/std``, call)."""
    module = _onnx_module()
    if module is None:
        raise CheckpointError(
            f"{path} is an ONNX model, but this defectfusion has no ONNX backend (engine/onnx_backend.py); "
            f"use the PyTorch detector folder instead"
        )
    return module.OnnxDetector(path)


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


class _ImageFiles(Dataset):
    """Images read and resized for the model: ``(uint8 [3, h, w] at the model size, (H, W), index)``."""

    def __init__(self, paths: Sequence[Path], image_size: tuple[int, int],
                 expected_sizes: Sequence[tuple[int, int] | None] | None = None) -> None:
        self.paths = list(paths)
        self.expected = list(expected_sizes) if expected_sizes is not None else [None] * len(self.paths)
        self.transform = build_eval_transform(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[int, int], int]:
        image = load_image(self.paths[i], expected_size=self.expected[i])
        size = (int(image.shape[-2]), int(image.shape[-1]))
        return self.transform(image).as_subclass(torch.Tensor), size, i


def _collate(batch: list[tuple[torch.Tensor, tuple[int, int], int]]):
    return (torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.int64),
            [b[2] for b in batch])


class Predictor:
    """Preprocess -> inference -> postprocess over image files, in batches.

    Args:
        backend: ``(pixel_values, orig_sizes (H, W)) -> list[Detections]`` in original pixels.
        class_names: name of each contiguous label.
        image_size: ``(H, W)`` the model expects.
        image_mean, image_std: per-channel normalisation on the ``[0, 1]`` scale.
        threshold: keep detections with ``score >= threshold``.
        batch_size: images per backend call.
        num_workers: image-loading worker processes (0: in this process).
    """

    def __init__(self, backend: Backend, class_names: Sequence[str], image_size: Sequence[int],
                 image_mean: Sequence[float] = (0.0, 0.0, 0.0), image_std: Sequence[float] = (1.0, 1.0, 1.0), *,
                 threshold: float = 0.0, batch_size: int = 8, num_workers: int = 0) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise DataError(f"score threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        self.backend = backend
        self.class_names = list(class_names)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mean = torch.tensor(list(image_mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(list(image_std), dtype=torch.float32).view(1, 3, 1, 1)
        self.threshold = float(threshold)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)

    @classmethod
    def from_model(cls, model: torch.nn.Module, *, device: str | torch.device = "cpu", top_k: int = 300,
                   **kwargs: Any) -> Predictor:
        """A predictor for an in-memory detector (it carries its classes and input settings in ``.meta``)."""
        meta = model.meta
        return cls(TorchBackend(model, device, top_k), model.class_names, meta.image_size, meta.image_mean,
                   meta.image_std, **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu",
                        top_k: int = 300, **kwargs: Any) -> Predictor:
        """A detector folder (PyTorch) or an exported ``.onnx`` file."""
        path = Path(checkpoint).expanduser()
        if path.is_file() and _looks_onnx(path):
            onnx = load_onnx_backend(path)
            return cls(onnx, onnx.class_names, onnx.image_size, onnx.image_mean, onnx.image_std, **kwargs)
        from ..models.checkpoint import load_detector

        return cls.from_model(load_detector(path), device=device, top_k=top_k, **kwargs)

    # ------------------------------------------------------------------ the three steps

    def preprocess(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``[3, H, W]`` images -> (``pixel_values [B, 3, h, w]`` normalised, ``orig_sizes [B, 2]`` (H, W))."""
        transform = build_eval_transform(self.image_size)
        sizes = torch.tensor([[int(im.shape[-2]), int(im.shape[-1])] for im in images], dtype=torch.int64)
        resized = torch.stack([transform(im).as_subclass(torch.Tensor) for im in images])
        return self._normalize(resized), sizes

    def _normalize(self, uint8_batch: torch.Tensor) -> torch.Tensor:
        pixels = uint8_batch.float().div_(255.0)
        return (pixels - self.mean) / self.std

    def infer(self, pixel_values: torch.Tensor, orig_sizes: torch.Tensor) -> list[Detections]:
        """Run the backend and keep detections at or above the threshold."""
        detections = self.backend(pixel_values, orig_sizes)
        if len(detections) != len(pixel_values):
            raise RuntimeError(f"backend returned {len(detections)} results for {len(pixel_values)} images")
        out = []
        for det in detections:
            keep = det.scores >= self.threshold
            out.append(Detections(det.boxes[keep].float(), det.scores[keep].float(), det.labels[keep].long()))
        return out

    def __call__(self, images: Sequence[torch.Tensor]) -> list[Detections]:
        """Detections of uint8 ``[3, H, W]`` images already in memory."""
        return self.infer(*self.preprocess(images))

    def predict_files(self, paths: Sequence[str | os.PathLike], image_ids: Sequence[int] | None = None, *,
                      expected_sizes: Sequence[tuple[int, int] | None] | None = None,
                      progress: bool | None = None, desc: str = "predict") -> Iterator[ImagePrediction]:
        """Yield one :class:`ImagePrediction` per file, in order.

        ``expected_sizes``: ``(width, height)`` per file from an annotations file (checked on
        load). ``progress``: a bar; ``None`` shows one above :data:`PROGRESS_FROM` images.
        """
        paths = [Path(p) for p in paths]
        ids = list(image_ids) if image_ids is not None else list(range(1, len(paths) + 1))
        if len(ids) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(ids)} image ids")
        loader = DataLoader(_ImageFiles(paths, self.image_size, expected_sizes), batch_size=self.batch_size,
                            shuffle=False, num_workers=self.num_workers, collate_fn=_collate)
        show = len(paths) > PROGRESS_FROM if progress is None else progress
        with tqdm(total=len(paths), desc=desc, unit="img", disable=not show, dynamic_ncols=True, leave=False) as bar:
            for pixels, sizes, indices in loader:
                for i, det, size in zip(indices, self.infer(self._normalize(pixels), sizes), sizes.tolist(),
                                        strict=True):
                    yield ImagePrediction(paths[i], (size[0], size[1]), det, ids[i])
                bar.update(len(indices))


# ---------------------------------------------------------------------------------- inputs


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def collect_images(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Files, folders (their images; ``recursive``: also in subfolders) and glob patterns -> image paths.

    Order: inputs in the order given, each folder's / pattern's matches sorted; duplicates once.

    Raises:
        DataError: listing every input that matched nothing (a missing file, an empty folder, a
            pattern without matches), or when no image at all was found.
    """
    if not inputs:
        raise DataError("no images given: pass image files, folders or glob patterns (e.g. 'images/*.png')")
    found: list[Path] = []
    unmatched: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            pattern = "**/*" if recursive else "*"
            matches = sorted(p for p in path.glob(pattern) if _is_image(p))
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if _is_image(Path(p)))
        else:
            matches = []
        if not matches:
            unmatched.append(text)
        found.extend(matches)
    if unmatched:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(
            f"{len(unmatched)} input(s) matched no image: {', '.join(repr(u) for u in unmatched)}. Give existing image "
            f"files, folders holding images ({exts}) or glob patterns such as 'images/*.png' (quote them)"
        )
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def resolve_category_ids(class_names: Sequence[str], annotations: str | os.PathLike | None = None,
                         category_ids: Sequence[int] | Mapping[str, int] | None = None) -> list[int]:
    """The COCO category id of each contiguous label.

    ``annotations``: its categories are matched to the model's classes by name; ``category_ids``:
    one id per label in label order, or ``{class name: id}``; neither: ``id = label``.
    """
    names = list(class_names)
    if annotations is not None and category_ids is not None:
        raise DataError("give the category ids either through an annotations file or explicitly, not both")
    if annotations is not None:
        cat_names, cat_ids, _ = read_categories(annotations)
        by_name = dict(zip(cat_names, cat_ids, strict=True))
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DataError(
                f"{annotations}: the model's classes {missing} are not among its categories "
                f"{list(by_name)}; use the annotations of the dataset the model was trained on"
            )
        return [int(by_name[n]) for n in names]
    if category_ids is None:
        return list(range(len(names)))
    if isinstance(category_ids, Mapping):
        missing = [n for n in names if n not in category_ids]
        if missing:
            raise DataError(f"category id mapping lacks the classes {missing}; it needs one id for each of {names}")
        ids = [category_ids[n] for n in names]
    else:
        ids = list(category_ids)
        if len(ids) != len(names):
            raise DataError(
                f"got {len(ids)} category ids for {len(names)} classes ({', '.join(names)}); give one id per class, "
                f"in class order"
            )
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise DataError(f"category ids must be integers, got {ids}")
    if len(set(ids)) != len(ids):
        raise DataError(f"category ids must be unique, got {ids}")
    return [int(i) for i in ids]


def _image_ids_from_annotations(paths: Sequence[Path], annotations: str | os.PathLike
                                ) -> tuple[list[int], list[tuple[int, int] | None]]:
    """COCO ids (and json sizes) of the inputs, matched by ``file_name`` (the path's tail)."""
    _, _, data = read_categories(annotations)
    images = data.get("images") if isinstance(data.get("images"), list) else []
    records = [im for im in images if isinstance(im, dict) and isinstance(im.get("id"), int)
               and isinstance(im.get("file_name"), str)]
    by_tail: dict[str, list[dict[str, Any]]] = {}
    for im in records:
        by_tail.setdefault(Path(im["file_name"]).name, []).append(im)
    ids, sizes, unmatched = [], [], []
    for p in paths:
        posix = p.resolve().as_posix()
        candidates = [im for im in by_tail.get(p.name, [])
                      if posix.endswith("/" + Path(im["file_name"]).as_posix().lstrip("./"))]
        if not candidates:
            unmatched.append(str(p))
            continue
        im = candidates[0]
        ids.append(int(im["id"]))
        w, h = im.get("width"), im.get("height")
        sizes.append((w, h) if isinstance(w, int) and isinstance(h, int) else None)
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise DataError(
            f"{len(unmatched)} image(s) are not listed in {annotations}'s 'images' (matched by file_name): {shown}. "
            f"Predict the annotated images only, or give --category-ids instead of --annotations"
        )
    return ids, sizes


def to_coco_results(predictions: Sequence[ImagePrediction], category_ids: Sequence[int] | None = None
                    ) -> list[dict[str, Any]]:
    """COCO results records (``bbox`` as ``[x, y, w, h]`` pixels), best score first within each image."""
    records = []
    for pred in predictions:
        det = pred.detections
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            records.append({
                "image_id": int(pred.image_id),
                "category_id": int(category_ids[label] if category_ids is not None else label),
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(float(score), 5),
            })
    return records


# ---------------------------------------------------------------------------------- predict


@dataclass
class PredictionRun:
    """What :func:`predict` produced."""

    predictions: list[ImagePrediction]
    class_names: list[str]
    category_ids: list[int]
    threshold: float
    out: Path | None = None
    results_json: Path | None = None
    predictions_json: Path | None = None
    drawn: list[Path] = field(default_factory=list)

    @property
    def num_detections(self) -> int:
        return sum(len(p.detections) for p in self.predictions)

    def counts_per_class(self) -> dict[str, int]:
        counts = dict.fromkeys(self.class_names, 0)
        for p in self.predictions:
            for label in p.detections.labels.tolist():
                counts[self.class_names[label]] += 1
        return counts


def _unique_name(path: Path, used: set[str]) -> str:
    suffix = ".jpg" if path.suffix.lower() in {".jpg", ".jpeg"} else ".png"
    name, n = f"{path.stem}{suffix}", 1
    while name in used:
        name, n = f"{path.stem}_{n}{suffix}", n + 1
    used.add(name)
    return name


def _save_image(image, path: Path) -> None:
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    with atomic_path(path, suffix=path.suffix) as tmp:
        image.save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))


def predict(checkpoint: str | os.PathLike | Predictor, inputs: Sequence[str | os.PathLike],
            out: str | os.PathLike | None = None, *, threshold: float = 0.25, top_k: int = 300,
            batch_size: int = 8, num_workers: int = 0, device: str = "cpu", recursive: bool = False,
            annotations: str | os.PathLike | None = None,
            category_ids: Sequence[int] | Mapping[str, int] | None = None, draw: bool = True,
            progress: bool | None = None) -> PredictionRun:
    """Detect objects in images and write the results (see the module docstring for the files).

    Args:
        checkpoint: a detector folder, an ``.onnx`` file, or a ready :class:`Predictor`.
        inputs: image files, folders and glob patterns.
        out: output folder; ``None`` writes nothing.
        threshold: minimum score of a detection (in the json files and on the images).
        annotations: a COCO file of these images: category ids by class name, image ids by file name.
        category_ids: the dataset's category id per class (list in class order, or by name).
        draw: write the images with boxes drawn.
    """
    paths = collect_images(inputs, recursive=recursive)
    if isinstance(checkpoint, Predictor):
        predictor = checkpoint
        predictor.threshold = float(threshold)
    else:
        predictor = Predictor.from_checkpoint(checkpoint, device=device, top_k=top_k, threshold=threshold,
                                              batch_size=batch_size, num_workers=num_workers)
    cat_ids = resolve_category_ids(predictor.class_names, annotations, category_ids)
    image_ids, sizes = (_image_ids_from_annotations(paths, annotations) if annotations is not None
                        else (None, None))
    run = PredictionRun([], predictor.class_names, cat_ids, predictor.threshold)
    if out is not None:
        run.out = Path(out)
        run.out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for pred in predictor.predict_files(paths, image_ids, expected_sizes=sizes, progress=progress):
        run.predictions.append(pred)
        if run.out is not None and draw:
            from ..report.plots import draw_detections

            drawn = draw_detections(load_image(pred.path), pred.detections, run.class_names,
                                    score_threshold=predictor.threshold,
                                    resize_to=DRAW_MIN_SIDE if max(pred.size) < DRAW_MIN_SIDE else None)
            target = run.out / "images" / _unique_name(pred.path, used)
            _save_image(drawn, target)
            run.drawn.append(target)
    if run.out is not None:
        run.results_json = run.out / "results.json"
        atomic_write_json(run.results_json, to_coco_results(run.predictions, cat_ids), indent=None)
        run.predictions_json = run.out / "predictions.json"
        atomic_write_json(run.predictions_json, _predictions_record(run))
    return run


def _predictions_record(run: PredictionRun) -> dict[str, Any]:
    images = []
    for k, pred in enumerate(run.predictions):
        det = pred.detections
        images.append({
            "image_id": pred.image_id,
            "file": str(pred.path),
            "height": pred.size[0],
            "width": pred.size[1],
            "drawn": str(run.drawn[k]) if k < len(run.drawn) else None,
            "detections": [
                {"box_xyxy": [round(v, 2) for v in box], "label": label, "class": run.class_names[label],
                 "category_id": run.category_ids[label], "score": round(score, 5)}
                for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(),
                                             strict=True)
            ],
        })
    return {"threshold": run.threshold, "class_names": run.class_names, "category_ids": run.category_ids,
            "num_images": len(images), "num_detections": run.num_detections, "images": images}
