"""YOLO txt labels to a COCO dict (and back, for round trips).

Layouts read: ``SRC/images/...`` with ``SRC/labels/...`` mirroring it (``images/train/a.jpg`` ->
``labels/train/a.txt``), or ``.txt`` files beside the images. Each label line is
``class cx cy w h``: a 0-based class index and the box centre and size normalized by the image
width / height. Class names come from ``data.yaml`` (``names:`` as a list or an ``{index: name}``
dict) or ``classes.txt`` (one per line); category ids are ``1..C`` in that order.
See :mod:`.voc` for why this is not done with globox / datumaro.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from ..errors import DataError
from .images import displayed_size
from .voc import ImportedDataset, build_coco, image_files, read_class_file

__all__ = ["read_yolo", "read_yolo_names", "write_yolo"]

YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
# .txt files of a YOLO folder that are not label files: class names, darknet image lists
NOT_LABELS = frozenset({"classes.txt", "train.txt", "val.txt", "valid.txt", "test.txt"})


def read_yolo_names(src: Path, classes: str | Path | None = None) -> tuple[list[str], Path]:
    """The class names of a YOLO dataset and the file they came from.

    ``classes`` (a one-name-per-line file) wins; else ``SRC/data.yaml`` (``names:``), else
    ``SRC/classes.txt`` (or ``SRC/labels/classes.txt``).
    """
    if classes is not None:
        return read_class_file(Path(classes)), Path(classes)
    for name in YAML_NAMES:
        path = src / name
        if path.is_file():
            return _yaml_names(path), path
    for path in (src / "classes.txt", src / "labels" / "classes.txt", src / "obj.names"):
        if path.is_file():
            return read_class_file(path), path
    raise DataError(
        f"no class names for the YOLO dataset {src}: expected {src / 'data.yaml'} with a 'names:' list, or "
        f"{src / 'classes.txt'} with one name per line (or pass --classes FILE)"
    )


def _yaml_names(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax there") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        keys = sorted(names, key=lambda k: int(k) if str(k).lstrip("-").isdigit() else math.inf)
        if [str(k) for k in keys] != [str(i) for i in range(len(keys))]:
            raise DataError(
                f"{path}: 'names' has keys {list(names)}; expected the class indexes 0..{len(names) - 1}, each once"
            )
        names = [names[k] for k in keys]
    if not (isinstance(names, list) and names and all(isinstance(n, (str, int)) for n in names)):
        raise DataError(
            f"{path}: expected 'names:' as a list of class names (or a dict index: name), got {names!r}; "
            f"add e.g. names: [crack, scratch]"
        )
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: 'names' repeats a class name ({names}); list each class once")
    return names


def _label_path(image: Path, images_dir: Path, labels_dir: Path | None) -> Path:
    if labels_dir is None:
        return image.with_suffix(".txt")
    return (labels_dir / image.relative_to(images_dir)).with_suffix(".txt")


def _parse_labels(path: Path, names: list[str], names_file: Path, size: tuple[int, int]) -> list[tuple]:
    """``(label, x, y, w, h)`` pixel boxes of one label file; every problem names the file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the label file {path}: {e}") from None
    width, height = size
    boxes = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {number}"
        if len(fields) != 5:
            hint = (
                "the class index looks missing: write it first, e.g. '0 0.5 0.5 0.2 0.1'"
                if len(fields) == 4
                else "segmentation polygons are not read: export boxes"
                if len(fields) > 5 and len(fields) % 2 == 1
                else "fix or delete that line"
            )
            raise DataError(
                f"{where}: expected 5 values 'class cx cy w h' (class index, then normalized box centre and size), "
                f"got {len(fields)} ({line.strip()!r}); {hint}"
            )
        try:
            cls_value = float(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise DataError(
                f"{where}: {line.strip()!r} is not numeric; expected 'class cx cy w h' with an integer class index "
                f"and four numbers in [0, 1]: fix or delete that line"
            ) from None
        if not cls_value.is_integer() or not 0 <= cls_value < len(names):
            raise DataError(
                f"{where}: class index {fields[0]} is not one of 0..{len(names) - 1} ({len(names)} names in "
                f"{names_file}); add the missing name there or fix the index"
            )
        if not all(math.isfinite(v) for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
            raise DataError(
                f"{where}: box {fields[1:]} must have finite values and a positive width and height (normalized "
                f"cx cy w h); fix or delete that line"
            )
        boxes.append((int(cls_value), (cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height))
    return boxes


def read_yolo(src: str | Path, classes: str | Path | None = None) -> ImportedDataset:
    """Read a YOLO dataset as COCO.

    An empty label file is a background image; so is an image without a label file (it is kept and
    listed in ``unlabeled``). Label files whose image is missing are listed in ``orphan_labels``.
    Image sizes are read from the image headers (displayed size, EXIF applied, as YOLO tools do).

    Raises:
        DataError: one line naming the label file and line number of a bad line (wrong number of
            values, non-numeric, class index out of range), or missing class names.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"YOLO source {src} is not a folder; pass the dataset folder (with images/ and labels/)")
    names, names_file = read_yolo_names(src, classes)
    if (src / "images").is_dir():
        images_dir = src / "images"
        labels_dir = src / "labels" if (src / "labels").is_dir() else None
    else:
        images_dir, labels_dir = src, None
    files = image_files(images_dir)
    if not files:
        raise DataError(f"no images under {images_dir}; is {src} a YOLO dataset (images/ and labels/)?")
    images, boxes, unlabeled, used_labels = [], [], [], set()
    for image in files:
        size = displayed_size(image)
        rel = image.relative_to(images_dir).as_posix()
        label = _label_path(image, images_dir, labels_dir)
        if label.is_file():
            boxes.append(_parse_labels(label, names, names_file, size))
            used_labels.add(label.resolve())
        else:
            boxes.append([])
            unlabeled.append(rel)
        images.append((rel, size[0], size[1]))
    label_root = labels_dir or images_dir
    orphans = sorted(
        p.relative_to(label_root).as_posix()
        for p in label_root.rglob("*.txt")
        if p.resolve() not in used_labels and p.name not in NOT_LABELS
    )
    return ImportedDataset(
        build_coco(names, images, boxes), files, images_dir, unlabeled=unlabeled, orphan_labels=orphans
    )


def write_yolo(coco: dict[str, Any], root: str | Path, names_file: str = "data.yaml") -> list[Path]:
    """Write ``root/labels/<image stem>.txt`` for every COCO image and the class names file.

    ``names_file`` is ``data.yaml`` (``names:`` list) or ``classes.txt``. Classes are indexed in
    the order of ``categories``; values are written with full float precision (``repr``).
    """
    root = Path(root)
    labels = root / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    index = {c["id"]: i for i, c in enumerate(coco["categories"])}
    names = [c["name"] for c in coco["categories"]]
    if names_file == "classes.txt":
        (root / names_file).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    else:
        (root / names_file).write_text(yaml.safe_dump({"names": names}, sort_keys=False), encoding="utf-8")
    lines: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        iw, ih = sizes[a["image_id"]]
        values = ((x + w / 2) / iw, (y + h / 2) / ih, w / iw, h / ih)
        lines[a["image_id"]].append(" ".join([str(index[a["category_id"]]), *(repr(float(v)) for v in values)]))
    written = []
    for im in coco["images"]:
        path = labels / (Path(im["file_name"]).with_suffix(".txt"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines[im["id"]]), encoding="utf-8")
        written.append(path)
    return written
