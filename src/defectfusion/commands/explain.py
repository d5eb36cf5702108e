"""``defectfusion explain``: similarity maps and detection matches of images, written as figures and numbers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..engine.explainer import explain_image, require_fused
from ..engine.onnx_backend import is_onnx_checkpoint
from ..errors import CheckpointError, ConfigError
from ..io import unique_names
from ..models.checkpoint import load_detector
from ..report.explain import ExplainFiles, write_explanation
from ..structures import Explanation


def explain(
    checkpoint: str | os.PathLike,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    threshold: float = 0.3,
    max_detections: int = 8,
    device: str = "cpu",
) -> list[tuple[Explanation, ExplainFiles]]:
    """Explanations of one or more images; several go to ``out/<image stem>/``."""
    path = Path(checkpoint).expanduser()
    if is_onnx_checkpoint(path):
        raise CheckpointError(
            f"{path} is an exported ONNX model; explain needs the PyTorch detector folder it was "
            f"exported from (the maps need the model's internal features)"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"the score threshold must be in [0, 1], got {threshold}")
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    model = load_detector(path, device=device)
    require_fused(model)
    names = unique_names([Path(item).stem for item in items]) if len(items) > 1 else [None]
    results = []
    for item, name in zip(items, names, strict=True):
        expl = explain_image(model, item, threshold=threshold, max_detections=max_detections, device=device)
        folder = Path(out) / name if name else Path(out)
        results.append((expl, write_explanation(expl, folder)))
    return results
