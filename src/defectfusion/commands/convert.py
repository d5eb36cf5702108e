"""``defectfusion convert``: a checkpoint of the original DEIMv2 code + its YAML -> a detector folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from ..models.checkpoint import CONFIG_NAME, save_detector
from ..models.original.config import OriginalConfig
from ..models.original.convert import ConversionResult, build_from_original, read_checkpoint


def convert_original(
    checkpoint: str | Path,
    config: str | Path,
    out: str | Path | None = None,
    *,
    weights: str | None = None,
    class_names: Sequence[str] | None = None,
    annotations: str | Path | None = None,
) -> ConversionResult:
    """Convert an original DEIMv2 checkpoint + YAML into a detector folder ``load_detector`` reads.

    Everything is checked before anything is written; on any error no output folder exists.

    Args:
        checkpoint: the original ``.pth`` (e.g. ``best_stg1.pth``).
        config: the original YAML it was trained with (``__include__`` files are followed).
        out: the folder to write (``config.json`` + ``model.safetensors``); None converts in memory.
        weights: ``"ema"`` or ``"model"``; default: EMA when present, as the original evaluates.
        class_names: names in channel order, or ``annotations``: a COCO json whose category ids are
            the channels (0..C-1); default ``class_0 ..``.
    """
    out_path = Path(out).expanduser() if out is not None else None
    if out_path is not None and out_path.exists():
        if not out_path.is_dir():
            raise ConfigError(f"{out_path} is a file; give a folder to write the converted model to")
        if any(out_path.iterdir()) and not (out_path / CONFIG_NAME).is_file():
            raise ConfigError(f"{out_path} is a non-empty folder that is not a detector folder; refusing to replace it")
    original_config = OriginalConfig.load(config)
    result = build_from_original(
        read_checkpoint(checkpoint, weights), original_config, class_names=class_names, annotations=annotations
    )
    if out_path is not None:
        result.out = save_detector(result.model, out_path)
    return result
