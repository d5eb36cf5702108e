"""The structure of a COCO annotations file, checked record by record (every problem names the record).

No image is opened here: :mod:`.coco` adds the checks that need the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io import read_json

REQUIRED_KEYS = ("images", "annotations", "categories")
MAX_LISTED = 20  # how many offending records an error message names before "and N more"


@dataclass(frozen=True)
class CocoImageRecord:
    """One entry of ``images``; ``width``/``height`` are the displayed (EXIF-oriented) size."""

    id: int
    file_name: str
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class CocoAnnotationRecord:
    """One kept annotation. ``bbox`` is ``(x1, y1, x2, y2)`` in pixels, already clipped."""

    id: int
    image_id: int
    category_id: int
    label: int
    bbox: tuple[float, float, float, float]
    area: float
    iscrowd: bool


def read_coco_json(path: Path) -> dict[str, Any]:
    data = read_json(path, "annotations file")
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a COCO object {{'images', 'annotations', 'categories'}}, got a {type(data).__name__}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise DataError(
            f"{path}: missing top-level key(s) {missing} (found {sorted(data)}); a COCO detection file "
            f"needs 'images', 'annotations' and 'categories' ('annotations' may be an empty list)"
        )
    for k in REQUIRED_KEYS:
        if not isinstance(data[k], list):
            raise DataError(f"{path}: '{k}' must be a list, got {type(data[k]).__name__}")
    return data


def parse_categories(categories: Any, source: str | Path) -> tuple[list[str], list[int]]:
    """Class names and COCO ids of a ``categories`` list, in list order (label ``i`` = entry ``i``).

    The one place a COCO category list is checked: a non-empty list of ``{"id": int, "name": str}``
    with unique ids and unique names. ``source`` names the file (or dict) in errors.
    """
    if not isinstance(categories, list):
        raise DataError(f"{source}: 'categories' must be a list of {{'id': int, 'name': str}}, got {categories!r}")
    if not categories:
        raise DataError(f"{source}: 'categories' is empty; list at least one class as {{'id': int, 'name': str}}")
    names: list[str] = []
    ids: list[int] = []
    for i, c in enumerate(categories):
        if not (isinstance(c, dict) and is_int(c.get("id")) and isinstance(c.get("name"), str)):
            raise DataError(f"{source}: categories[{i}] must have an integer 'id' and a string 'name', got {c!r}")
        if c["id"] in ids:
            raise DataError(f"{source}: categories[{i}] repeats category id {c['id']}; each class needs a unique id")
        if c["name"] in names:
            raise DataError(f"{source}: categories[{i}] repeats the name {c['name']!r}; each class needs a unique name")
        ids.append(c["id"])
        names.append(c["name"])
    return names, ids


def read_categories(path: str | Path) -> tuple[list[str], list[int], dict[str, Any]]:
    """Class names and ids of a COCO annotations file, and its content (images are not checked)."""
    path = Path(path)
    data = read_json(path, "annotations file")
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO object with a 'categories' list, got a {type(data).__name__}")
    if "categories" not in data:
        raise DataError(f"{path}: no 'categories' list; expected COCO categories [{{'id': 1, 'name': ...}}, ...]")
    names, ids = parse_categories(data["categories"], path)
    return names, ids, data


def parse_images(images: list[Any], path: Path, images_dir: Path) -> list[CocoImageRecord]:
    records: list[CocoImageRecord] = []
    seen: set[int] = set()
    for i, im in enumerate(images):
        if not (isinstance(im, dict) and is_int(im.get("id")) and isinstance(im.get("file_name"), str)):
            raise DataError(f"{path}: images[{i}] must have an integer 'id' and a string 'file_name', got {im!r}")
        if im["id"] in seen:
            raise DataError(
                f"{path}: images[{i}] ({im['file_name']}) repeats image id {im['id']}; image ids must be unique"
            )
        seen.add(im["id"])
        w, h = im.get("width"), im.get("height")
        if (w is None) != (h is None) or (w is not None and not (is_int(w) and is_int(h) and w > 0 and h > 0)):
            raise DataError(
                f"{path}: images[{i}] (id {im['id']}, {im['file_name']}) has width={w!r}, height={h!r}; "
                f"expected positive integers (or neither, to read them from the file)"
            )
        records.append(CocoImageRecord(im["id"], im["file_name"], images_dir / im["file_name"], w or 0, h or 0))
    return records


def check_references(
    anns: list[Any], path: Path, cat_to_label: dict[int, int], sizes: dict[int, tuple[int, int]]
) -> None:
    """Every annotation must be an object pointing at a known image and category."""
    bad_cat: list[str] = []
    bad_img: list[str] = []
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise DataError(f"{path}: annotations[{i}] must be an object, got {a!r}")
        cat, img = a.get("category_id"), a.get("image_id")
        if not (is_int(cat) and cat in cat_to_label):
            bad_cat.append(f"{ann_name(a, i)} has category_id {cat!r}")
        if not (is_int(img) and img in sizes):
            bad_img.append(f"{ann_name(a, i)} has image_id {img!r}")
    if bad_cat:
        raise DataError(
            f"{path}: {len(bad_cat)} annotation(s) use unknown category ids: {'; '.join(capped(bad_cat, 5))}. "
            f"Known category ids: {list(cat_to_label)}. Add the category to 'categories' or fix the annotation."
        )
    if bad_img:
        raise DataError(
            f"{path}: {len(bad_img)} annotation(s) refer to images not in 'images': "
            f"{'; '.join(capped(bad_img, 5))}. Add the image record or remove the annotation."
        )


def ann_name(a: dict[str, Any], index: int) -> str:
    return f"annotation id {a['id']} (annotations[{index}])" if is_int(a.get("id")) else f"annotations[{index}]"


def capped(items: list[str], cap: int = MAX_LISTED) -> list[str]:
    return items if len(items) <= cap else [*items[:cap], f"... and {len(items) - cap} more"]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
