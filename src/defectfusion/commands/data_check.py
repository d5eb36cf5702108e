"""`defectfusion data check`: load the splits, check them, write the dataset report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..data.dataset_check import DatasetCheck, check_dataset, load_splits
from ..errors import ConfigError
from ..report.dataset_report import write_dataset_report


@dataclass
class DataCheckOutcome:
    """The check result and where its report went."""

    check: DatasetCheck
    out_dir: Path
    files: list[Path]


def data_check(
    annotations: list[str | os.PathLike], image_size: int = 640, out: str | os.PathLike | None = None
) -> DataCheckOutcome:
    """Check the COCO annotation files ``annotations`` (one per split) at model input size ``image_size``.

    The report goes to ``out`` (default: ``<folder of the first annotations file>/data_check``).
    Problems in the data are returned, not raised: only unreadable or invalid files raise ``DataError``.
    """
    if not annotations:
        raise ConfigError("data check needs at least one COCO annotations json (one per split)")
    if image_size < 32:
        raise ConfigError(f"--image-size must be at least 32 px, got {image_size}")
    paths = [Path(p) for p in annotations]
    splits = load_splits(paths)
    check = check_dataset(splits, image_size=image_size)
    out_dir = Path(out) if out is not None else paths[0].parent / "data_check"
    files = write_dataset_report(check, splits, out_dir)
    return DataCheckOutcome(check, out_dir, files)
