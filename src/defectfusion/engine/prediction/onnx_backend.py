"""Run an exported detector (``defectfusion export``) with onnxruntime: a prediction backend.

The file carries everything needed to use it (ONNX ``metadata_props``, written by
:mod:`.export`): class names, the input size, the normalisation, the order of
``orig_target_sizes`` and the format version. ::

    detector = OnnxDetector("model.onnx")
    detections = detector(pixel_values, orig_sizes)   # [B, 3, H, W] normalised, [B, 2] (H, W)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CheckpointError, DataError
from ...structures import Detections

#: The value of the ``defectfusion.format`` metadata entry this code reads and writes.
ONNX_FORMAT = "defectfusion.onnx.v1"
FORMAT_KEY = "defectfusion.format"
INPUT_NAMES = ("images", "orig_target_sizes")
OUTPUT_NAMES = ("labels", "boxes", "scores")


def _import_onnxruntime():
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise CheckpointError(
            "running an .onnx model needs onnxruntime, which is not installed: pip install 'defectfusion[export]'"
        ) from None
    return onnxruntime


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (weights are not loaded)."""
    try:
        import onnx
    except ModuleNotFoundError:
        raise CheckpointError(
            "reading .onnx files needs onnx, which is not installed: pip install 'defectfusion[export]'"
        ) from None
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types on garbage
        raise CheckpointError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    return {p.key: p.value for p in model.metadata_props}


def is_onnx_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ONNX file (``.onnx``, or any file carrying defectfusion's ONNX metadata)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".onnx":
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    # An ONNX ModelProto starts with field 1 (ir_version, a varint); zip archives (.pth) with "PK".
    if not head or head[0] != 0x08:
        return False
    try:
        return read_metadata(path).get(FORMAT_KEY, "").startswith("defectfusion.onnx.")
    except CheckpointError:
        return False


def _json_field(meta: dict[str, str], key: str, path: Path) -> Any:
    if key not in meta:
        raise CheckpointError(
            f"{path}: the ONNX metadata has no {key!r}; export the model with `defectfusion export` "
            f"(other ONNX files do not say their classes and input)"
        )
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata entry {key!r} is not valid JSON ({exc})") from None


class OnnxDetector:
    """An exported detector run by onnxruntime.

    Args:
        path: the ``.onnx`` file written by ``defectfusion export``.
        threads: onnxruntime intra-op threads (``None``: onnxruntime's default).
        providers: onnxruntime execution providers (default: CPU).

    Attributes:
        class_names: name of each contiguous label.
        image_size: ``(H, W)`` the graph takes.
        image_mean, image_std: per-channel normalisation (``[0, 1]`` scale) the inputs need.
        batch: the fixed batch size, or ``None`` when the graph takes any batch.
        top_k: detections per image the graph returns.
        metadata: every ONNX metadata entry, as stored.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model {str(self.path)!r} does not exist")
        meta = read_metadata(self.path)
        fmt = meta.get(FORMAT_KEY)
        if fmt is None:
            raise CheckpointError(
                f"{self.path} was not written by `defectfusion export` (no {FORMAT_KEY!r} metadata); its classes, "
                f"input size and normalisation are unknown"
            )
        if fmt != ONNX_FORMAT:
            raise CheckpointError(f"{self.path} has ONNX format {fmt!r}; this defectfusion reads {ONNX_FORMAT!r}")
        self.metadata = meta
        self.class_names = [str(n) for n in _json_field(meta, "class_names", self.path)]
        ids = json.loads(meta["category_ids"]) if meta.get("category_ids") else None  # files before it: none
        self.category_ids = [int(i) for i in ids] if ids else None
        self.resize = meta.get("resize", "plain")  # files before letterbox: the plain resize
        height, width = _json_field(meta, "image_size", self.path)
        self.image_size = (int(height), int(width))
        self.image_mean = tuple(float(v) for v in _json_field(meta, "image_mean", self.path))
        self.image_std = tuple(float(v) for v in _json_field(meta, "image_std", self.path))
        order = meta.get("orig_target_sizes", "H,W").replace(" ", "").upper()
        if order not in {"H,W", "W,H"}:
            raise CheckpointError(f"{self.path}: unknown orig_target_sizes order {order!r} (expected 'H,W' or 'W,H')")
        self.sizes_order = order
        batch = meta.get("batch", "dynamic")
        self.batch = None if batch == "dynamic" else int(batch)
        self.top_k = int(meta.get("top_k", "0")) or None

        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise CheckpointError(f"onnxruntime cannot load {self.path}: {exc}") from None
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES:
            raise CheckpointError(f"{self.path}: graph inputs are {list(names)}, expected {list(INPUT_NAMES)}")

    def run(self, images: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw graph outputs ``labels [B, K], boxes [B, K, 4], scores [B, K]`` for ``sizes`` in (H, W)."""
        if self.sizes_order == "W,H":
            sizes = sizes[:, ::-1]
        feeds = {
            "images": np.ascontiguousarray(images, dtype=np.float32),
            "orig_target_sizes": np.ascontiguousarray(sizes, dtype=np.int64),
        }
        labels, boxes, scores = self.session.run(list(OUTPUT_NAMES), feeds)
        return labels, boxes, scores

    def __call__(self, pixel_values: torch.Tensor, orig_sizes: torch.Tensor) -> list[Detections]:
        """Detections per image, boxes in original pixels, best first.

        Args:
            pixel_values: ``[B, 3, H, W]`` float, normalised with :attr:`image_mean` / :attr:`image_std`,
                at :attr:`image_size`.
            orig_sizes: ``[B, 2]`` original image sizes ``(H, W)``.
        """
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, *self.image_size):
            raise DataError(
                f"{self.path.name} takes images [B, 3, {self.image_size[0]}, {self.image_size[1]}] (it was exported at "
                f"{self.image_size[0]}x{self.image_size[1]}), got {list(pixel_values.shape)}; resize the images to "
                f"the exported size, or export again at this size"
            )
        if orig_sizes.shape != (pixel_values.shape[0], 2):
            raise DataError(
                f"orig_sizes must be [B, 2] (H, W) for {pixel_values.shape[0]} images, got {list(orig_sizes.shape)}"
            )
        images = pixel_values.detach().to("cpu", torch.float32).numpy()
        sizes = orig_sizes.detach().to("cpu", torch.int64).numpy()
        step = self.batch or len(images)
        results: list[Detections] = []
        for start in range(0, len(images), step):
            chunk, chunk_sizes = images[start : start + step], sizes[start : start + step]
            count = len(chunk)
            if count < step:  # a fixed-batch graph: pad the last chunk, drop what the padding produced
                pad = step - count
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
                chunk_sizes = np.concatenate([chunk_sizes, np.repeat(chunk_sizes[-1:], pad, axis=0)])
            labels, boxes, scores = self.run(chunk, chunk_sizes)
            for i in range(count):
                results.append(
                    Detections(
                        torch.from_numpy(boxes[i].astype(np.float32)),
                        torch.from_numpy(scores[i].astype(np.float32)),
                        torch.from_numpy(labels[i].astype(np.int64)),
                    )
                )
        return results

    def __repr__(self) -> str:
        batch = "dynamic" if self.batch is None else self.batch
        return (
            f"OnnxDetector({str(self.path)!r}, classes={len(self.class_names)}, "
            f"image_size={self.image_size}, batch={batch})"
        )
