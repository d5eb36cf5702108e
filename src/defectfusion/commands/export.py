"""``defectfusion export``: a detector folder -> one ONNX file, checked by onnxruntime against PyTorch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..data.coco import load_coco
from ..engine.export.export import (
    DEFAULT_OPSET,
    DEFAULT_TOP_K,
    ExportResult,
    check_opset,
    check_out,
    export_model,
    parse_batch,
)
from ..errors import CheckpointError, ConfigError
from ..models.checkpoint import load_detector


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: Sequence[int] | None = None,
    batch: int | str = "dynamic",
    opset: int = DEFAULT_OPSET,
    top_k: int = DEFAULT_TOP_K,
    check: bool = True,
    threads: int | None = None,
    half: bool = False,
    check_data: str | os.PathLike | None = None,
    max_map_drop: float = 0.01,
) -> ExportResult:
    """Export a detector folder to one ONNX file, checked by onnxruntime against PyTorch.

    Args:
        checkpoint: a detector folder (``config.json`` + ``model.safetensors``).
        out: the ``.onnx`` file to write (replaced atomically; nothing is written on any error).
        size: ``(H, W)`` the graph takes; default: the model's image size. Must be multiples of
            the model's largest stride.
        batch: ``"dynamic"`` or a fixed batch size.
        opset: ONNX opset, :data:`MIN_OPSET` .. :data:`MAX_OPSET`.
        top_k: detections per image the graph returns.
        check: run onnxruntime on a test batch (batch 1 and 2 when dynamic) and compare with PyTorch.
        threads: onnxruntime threads for the check.
        half: float16 weights (float32 inputs, outputs and arithmetic), checked by label agreement
            and, with ``check_data`` (a COCO json), by mAP@0.5 against the float32 model: a drop
            beyond ``max_map_drop`` fails the export.

    Raises:
        ConfigError: unsupported opset, batch or size. CheckpointError: unreadable checkpoint.
        ExportError: the exporter failed or the graph's detections differ from PyTorch's.
    """
    check_opset(opset)
    parse_batch(batch)
    check_out(out)
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_file() and path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path} is already an ONNX file; export takes a detector folder")
    if check_data is not None and not half:
        raise ConfigError("check_data scores the float16 export against float32: it needs half=True (--half)")
    index = load_coco(check_data) if check_data is not None else None
    model = load_detector(path)
    return export_model(
        model,
        out,
        size=size,
        batch=batch,
        opset=opset,
        top_k=top_k,
        check=check,
        threads=threads,
        half=half,
        check_index=index,
        max_map_drop=max_map_drop,
    )
