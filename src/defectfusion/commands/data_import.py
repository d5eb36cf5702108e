"""``defectfusion data import`` / ``data split``: VOC or YOLO datasets to COCO, and a stratified split."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data.coco import load_coco
from ..data.split import SplitSummary, check_fractions, write_split
from ..data.voc import ImportedDataset, read_voc
from ..data.yolo import read_yolo
from ..errors import DataError
from ..io import atomic_write_dir, atomic_write_json

__all__ = ["FORMATS", "ImportSummary", "import_dataset", "split_dataset"]

FORMATS = ("voc", "yolo")


@dataclass
class ImportSummary:
    """What :func:`import_dataset` wrote and found.

    ``unlabeled``: images without a label file (YOLO: kept as background; VOC: left out);
    ``orphan_labels``: YOLO label files without an image (ignored).
    """

    fmt: str
    annotations: Path
    images_dir: Path
    num_images: int
    num_background: int
    instances: dict[str, int]
    unlabeled: list[str] = field(default_factory=list)
    orphan_labels: list[str] = field(default_factory=list)
    copied: bool = False
    split: SplitSummary | None = None


def _place_images(data: ImportedDataset, images_dir: Path, copy: bool) -> None:
    def write(tmp: Path) -> None:
        for im, source in zip(data.coco["images"], data.sources, strict=True):
            target = tmp / im["file_name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(source, target)
            else:
                os.symlink(source.resolve(), target)

    atomic_write_dir(images_dir, write)


def import_dataset(
    fmt: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classes: str | os.PathLike | None = None,
    copy: bool = False,
    split: list[float] | None = None,
    seed: int = 0,
    images: str | os.PathLike | None = None,
) -> ImportSummary:
    """Read a VOC or YOLO dataset and write ``out/images`` (links, or copies) + ``out/annotations.json``.

    ``images``: VOC only, where the images are (default: anywhere under ``src``).

    With ``split`` (2 or 3 fractions) also writes ``out/{train,val[,test]}/annotations.json``
    (see :func:`defectfusion.data.split.write_split`).

    Raises:
        DataError: an unknown format, ``out`` inside ``src``, or any problem of the source files
            (one line naming the file and line / element).
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    src, out = Path(src), Path(out)
    if out.resolve().is_relative_to(src.resolve()):
        raise DataError(f"output folder {out} is inside the source {src}; choose an output folder outside it")
    if images is not None and fmt != "voc":
        raise DataError("--images is for VOC datasets; a YOLO dataset's images are its images/ folder (or SRC itself)")
    data = read_voc(src, classes, images) if fmt == "voc" else read_yolo(src, classes)
    if split is not None:
        check_fractions(split)  # before writing anything
    images_dir = out / "images"
    _place_images(data, images_dir, copy)
    annotations = out / "annotations.json"
    atomic_write_json(annotations, data.coco)
    load_coco(annotations)  # what training will read: fail here, not there
    names = {c["id"]: c["name"] for c in data.coco["categories"]}
    counts = Counter(a["category_id"] for a in data.coco["annotations"])
    summary = ImportSummary(
        fmt=fmt,
        annotations=annotations,
        images_dir=images_dir,
        num_images=len(data.coco["images"]),
        num_background=data.num_background,
        instances={name: counts[cid] for cid, name in names.items()},
        unlabeled=data.unlabeled,
        orphan_labels=data.orphan_labels,
        copied=copy,
    )
    if split is not None:
        summary.split = write_split(annotations, out, split, seed)
    return summary


def split_dataset(
    annotations: str | os.PathLike,
    out: str | os.PathLike,
    fractions: list[float],
    *,
    seed: int = 0,
    images: str | os.PathLike | None = None,
) -> SplitSummary:
    """Split a COCO annotations file into ``out/{train,val[,test]}/annotations.json`` (deterministic)."""
    return write_split(annotations, out, fractions, seed, images)
