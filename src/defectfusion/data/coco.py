"""COCO detection data: load and validate an annotations file, read images, serve samples.

``load_coco`` reads the json once, checks it up front and returns a :class:`CocoIndex`;
:class:`CocoDetection` turns the index into a ``torch.utils.data.Dataset`` of
``(image, target)`` pairs ready for ``torchvision.transforms.v2``.

Conventions:

- Labels are contiguous ``0 .. C-1`` in the order of the json's ``categories`` list, so the
  list order decides which detector output channel is which class.
- Boxes are stored ``x1, y1, x2, y2`` in pixels of the displayed image. Boxes with a
  non-positive (or non-finite) width/height are dropped, boxes reaching outside the image are
  clipped; both are counted in one summary :class:`CocoWarning`.
- Crowd annotations (``iscrowd: 1``) stay in the index (evaluation treats them as ignore
  regions) but never reach training targets. Images without annotations are negatives.
- Images are returned as RGB ``uint8``. Alpha is composited on white; 16-bit data is scaled
  to 8 bit over the 16-bit range (see :func:`load_image`); EXIF orientation is applied.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors

from defectfusion.errors import DataError
from defectfusion.io import read_json

__all__ = [
    "CocoAnnotationRecord",
    "CocoDetection",
    "CocoImageRecord",
    "CocoIndex",
    "CocoWarning",
    "load_coco",
    "load_image",
]

_REQUIRED_KEYS = ("images", "annotations", "categories")
_MAX_LISTED = 20  # how many offending records an error message names before "and N more"

Transform = Callable[[tv_tensors.Image, dict[str, Any]], tuple[tv_tensors.Image, dict[str, Any]]]


class CocoWarning(UserWarning):
    """A recoverable problem in a COCO dataset (boxes dropped or clipped)."""


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


@dataclass
class CocoIndex:
    """A validated COCO detection dataset: image records, cleaned annotations, class mapping.

    Attributes:
        annotations_file: the json it was read from.
        images_dir: folder the image ``file_name``\\ s are relative to.
        images: image records in json order.
        annotations: image id -> kept annotations of that image (``[]`` for negatives), crowd
            annotations included.
        class_names: ``C`` names, index = label.
        label_to_category_id: ``C`` COCO category ids, index = label.
        category_id_to_label: inverse of ``label_to_category_id``.
        num_dropped_boxes: boxes removed for a non-positive size (or lying fully outside).
        num_clipped_boxes: boxes clipped to their image.
    """

    annotations_file: Path
    images_dir: Path
    images: list[CocoImageRecord]
    annotations: dict[int, list[CocoAnnotationRecord]]
    class_names: tuple[str, ...]
    label_to_category_id: tuple[int, ...]
    category_id_to_label: dict[int, int]
    num_dropped_boxes: int = 0
    num_clipped_boxes: int = 0
    _info: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def training_targets(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-crowd boxes ``[N, 4]`` float32 xyxy pixels and labels ``[N]`` int64 of one image."""
        anns = [a for a in self.annotations[image_id] if not a.iscrowd]
        boxes = torch.tensor([a.bbox for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a.label for a in anns], dtype=torch.int64)
        return boxes, labels

    def verify_images(self, progress: bool = True) -> None:
        """Open and decode every image once; raise one :class:`DataError` listing all bad files.

        Catches corrupt or truncated files and sizes that disagree with the json, before a
        training run meets them in the middle of an epoch.
        """
        from tqdm.auto import tqdm

        problems: list[str] = []
        for rec in tqdm(self.images, desc="checking images", unit="img", disable=not progress):
            try:
                load_image(rec.path, expected_size=(rec.width, rec.height), image_id=rec.id)
            except DataError as e:
                problems.append(str(e))
        if problems:
            raise DataError(
                f"{len(problems)} of {len(self.images)} images listed in {self.annotations_file} "
                f"cannot be used: " + "; ".join(_capped(problems))
            )

    def to_coco_dict(self) -> dict[str, Any]:
        """The cleaned ground truth as a COCO dict (boxes clipped, degenerate ones dropped).

        Evaluate against this rather than the raw file so that training and evaluation see
        the same boxes. ``bbox`` is ``[x, y, w, h]``; crowd annotations are kept.
        """
        anns = [
            {
                "id": a.id,
                "image_id": a.image_id,
                "category_id": a.category_id,
                "bbox": [a.bbox[0], a.bbox[1], a.bbox[2] - a.bbox[0], a.bbox[3] - a.bbox[1]],
                "area": a.area,
                "iscrowd": int(a.iscrowd),
            }
            for rec in self.images
            for a in self.annotations[rec.id]
        ]
        return {
            **self._info,
            "images": [
                {"id": r.id, "file_name": r.file_name, "width": r.width, "height": r.height}
                for r in self.images
            ],
            "annotations": anns,
            "categories": [
                {"id": cid, "name": name}
                for cid, name in zip(self.label_to_category_id, self.class_names, strict=True)
            ],
        }


# --------------------------------------------------------------------------- loading the json


def load_coco(annotations: str | Path, images: str | Path | None = None) -> CocoIndex:
    """Read and validate a COCO detection annotations file.

    Args:
        annotations: the json file.
        images: folder holding the images; defaults to ``<json folder>/images`` if that exists,
            else the json's own folder.

    Raises:
        DataError: unreadable or invalid json, missing top-level keys, malformed records,
            unknown category or image ids, missing image files (all of them are listed).

    Warns:
        CocoWarning: once, if boxes were dropped (non-positive size) or clipped to the image.
    """
    ann_path = Path(annotations)
    data = _read_json(ann_path)
    if images is None:
        images_dir = ann_path.parent / "images"
        if not images_dir.is_dir():
            images_dir = ann_path.parent
    else:
        images_dir = Path(images)
        if not images_dir.is_dir():
            raise DataError(
                f"images folder {images_dir} (for {ann_path}) does not exist; pass the folder holding the images"
            )

    names, cat_ids = parse_categories(data["categories"], ann_path)
    cat_to_label = {cid: i for i, cid in enumerate(cat_ids)}
    records = _parse_images(data["images"], ann_path, images_dir)
    _check_files_exist(records, ann_path, images_dir)
    records = [_fill_missing_size(r, ann_path) for r in records]

    by_image: dict[int, list[CocoAnnotationRecord]] = {r.id: [] for r in records}
    sizes = {r.id: (r.width, r.height) for r in records}
    anns = data["annotations"]
    _check_references(anns, ann_path, cat_to_label, sizes)

    used_ids = {a["id"] for a in anns if _is_int(a.get("id"))}
    next_id = max(used_ids, default=0) + 1
    dropped: list[str] = []
    clipped: list[str] = []
    for i, a in enumerate(anns):
        if _is_int(a.get("id")):
            ann_id = a["id"]
        else:  # pycocotools indexes by id: give id-less records fresh ones
            ann_id, next_id = next_id, next_id + 1
        where = _ann_name(a, i)
        bbox = a.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DataError(
                f"{ann_path}: {where} has bbox {bbox!r}; expected 4 numbers [x, y, width, height] in pixels"
            )
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            dropped.append(where)
            continue
        img_w, img_h = sizes[a["image_id"]]
        x1, y1 = min(max(x, 0.0), img_w), min(max(y, 0.0), img_h)
        x2, y2 = min(max(x + w, 0.0), img_w), min(max(y + h, 0.0), img_h)
        if x2 - x1 <= 0 or y2 - y1 <= 0:  # entirely outside the image: nothing left to clip to
            dropped.append(where)
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            clipped.append(where)
        area = float(a["area"]) if _is_number(a.get("area")) else (x2 - x1) * (y2 - y1)
        by_image[a["image_id"]].append(
            CocoAnnotationRecord(
                id=ann_id,
                image_id=a["image_id"],
                category_id=a["category_id"],
                label=cat_to_label[a["category_id"]],
                bbox=(x1, y1, x2, y2),
                area=area,
                iscrowd=bool(a.get("iscrowd", 0)),
            )
        )
    if dropped or clipped:
        parts = []
        if dropped:
            parts.append(
                f"dropped {len(dropped)} box(es) with non-positive width/height or lying outside "
                f"their image ({', '.join(_capped(dropped, 5))})"
            )
        if clipped:
            parts.append(
                f"clipped {len(clipped)} box(es) extending outside their image to its bounds "
                f"({', '.join(_capped(clipped, 5))})"
            )
        warnings.warn(
            f"{ann_path}: " + "; ".join(parts) + ". Fix the boxes in the file to silence this.",
            CocoWarning,
            stacklevel=2,
        )
    info = {k: data[k] for k in ("info", "licenses") if k in data}
    return CocoIndex(
        annotations_file=ann_path,
        images_dir=images_dir,
        images=records,
        annotations=by_image,
        class_names=tuple(names),
        label_to_category_id=tuple(cat_ids),
        category_id_to_label=cat_to_label,
        num_dropped_boxes=len(dropped),
        num_clipped_boxes=len(clipped),
        _info=info,
    )


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path, "annotations file")
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a COCO object {{'images', 'annotations', 'categories'}}, got a {type(data).__name__}"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise DataError(
            f"{path}: missing top-level key(s) {missing} (found {sorted(data)}); a COCO detection file "
            f"needs 'images', 'annotations' and 'categories' ('annotations' may be an empty list)"
        )
    for k in _REQUIRED_KEYS:
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
        raise DataError(
            f"{source}: 'categories' is empty; list at least one class as {{'id': int, 'name': str}}"
        )
    names: list[str] = []
    ids: list[int] = []
    for i, c in enumerate(categories):
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)):
            raise DataError(
                f"{source}: categories[{i}] must have an integer 'id' and a string 'name', got {c!r}"
            )
        if c["id"] in ids:
            raise DataError(
                f"{source}: categories[{i}] repeats category id {c['id']}; each class needs a unique id"
            )
        if c["name"] in names:
            raise DataError(
                f"{source}: categories[{i}] repeats the name {c['name']!r}; each class needs a unique name"
            )
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


def _parse_images(images: list[Any], path: Path, images_dir: Path) -> list[CocoImageRecord]:
    records: list[CocoImageRecord] = []
    seen: set[int] = set()
    for i, im in enumerate(images):
        if not (isinstance(im, dict) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str)):
            raise DataError(
                f"{path}: images[{i}] must have an integer 'id' and a string 'file_name', got {im!r}"
            )
        if im["id"] in seen:
            raise DataError(
                f"{path}: images[{i}] ({im['file_name']}) repeats image id {im['id']}; image ids must be unique"
            )
        seen.add(im["id"])
        w, h = im.get("width"), im.get("height")
        if (w is None) != (h is None) or (
            w is not None and not (_is_int(w) and _is_int(h) and w > 0 and h > 0)
        ):
            raise DataError(
                f"{path}: images[{i}] (id {im['id']}, {im['file_name']}) has width={w!r}, height={h!r}; "
                f"expected positive integers (or neither, to read them from the file)"
            )
        records.append(
            CocoImageRecord(im["id"], im["file_name"], images_dir / im["file_name"], w or 0, h or 0)
        )
    return records


def _check_files_exist(records: list[CocoImageRecord], path: Path, images_dir: Path) -> None:
    missing = [r.file_name for r in records if not r.path.is_file()]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} of {len(records)} image file(s) are not in {images_dir}: "
            f"{', '.join(_capped(missing))}. Pass the right images folder or remove those records."
        )


def _fill_missing_size(rec: CocoImageRecord, path: Path) -> CocoImageRecord:
    """Read width/height from the file header when the json omits them (displayed size)."""
    if rec.width > 0:
        return rec
    try:
        with Image.open(rec.path) as im:
            w, h = im.size
            if _exif_orientation(im) in (5, 6, 7, 8):  # rotated by 90 degrees when displayed
                w, h = h, w
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {rec.path} (id {rec.id} in {path}) cannot be opened: {e}") from None
    return CocoImageRecord(rec.id, rec.file_name, rec.path, w, h)


def _check_references(
    anns: list[Any], path: Path, cat_to_label: dict[int, int], sizes: dict[int, tuple[int, int]]
) -> None:
    """Every annotation must be an object pointing at a known image and category."""
    bad_cat: list[str] = []
    bad_img: list[str] = []
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise DataError(f"{path}: annotations[{i}] must be an object, got {a!r}")
        cat, img = a.get("category_id"), a.get("image_id")
        if not (_is_int(cat) and cat in cat_to_label):
            bad_cat.append(f"{_ann_name(a, i)} has category_id {cat!r}")
        if not (_is_int(img) and img in sizes):
            bad_img.append(f"{_ann_name(a, i)} has image_id {img!r}")
    if bad_cat:
        raise DataError(
            f"{path}: {len(bad_cat)} annotation(s) use unknown category ids: {'; '.join(_capped(bad_cat, 5))}. "
            f"Known category ids: {list(cat_to_label)}. Add the category to 'categories' or fix the annotation."
        )
    if bad_img:
        raise DataError(
            f"{path}: {len(bad_img)} annotation(s) refer to images not in 'images': "
            f"{'; '.join(_capped(bad_img, 5))}. Add the image record or remove the annotation."
        )


def _ann_name(a: dict[str, Any], index: int) -> str:
    return (
        f"annotation id {a['id']} (annotations[{index}])" if _is_int(a.get("id")) else f"annotations[{index}]"
    )


def _capped(items: list[str], cap: int = _MAX_LISTED) -> list[str]:
    return items if len(items) <= cap else [*items[:cap], f"... and {len(items) - cap} more"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- reading images


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF must not make a readable image unusable
        return 1


def load_image(
    path: str | Path, expected_size: tuple[int, int] | None = None, image_id: int | None = None
) -> tv_tensors.Image:
    """Read an image as RGB ``uint8`` ``[3, H, W]`` in its displayed orientation.

    - EXIF orientation is applied (COCO ``width``/``height`` describe the displayed image).
      If the json size matches only the *stored* pixel grid (an annotation tool that ignored
      EXIF, so its boxes are in stored pixels too), the stored orientation is kept.
    - Grayscale (``1``, ``L``) is replicated to three channels; palette and other colour
      modes are converted by Pillow.
    - Alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is composited on **white**: a
      transparent background reads as blank surface rather than black, and fully opaque
      images are unchanged.
    - 16-bit data (``I;16*``, or ``I`` holding values in ``0..65535``) is scaled by
      ``255 / 65535``, the same mapping for every image, so relative brightness and ordering
      are kept (Pillow's own conversion clips everything above 255). ``I``/``F`` data
      within ``0..255`` is taken as is (fractional ``F`` data within ``[0, 1]`` times 255);
      anything else is stretched min..max to ``0..255``.

    Args:
        path: the image file.
        expected_size: ``(width, height)`` from the json; a mismatch raises :class:`DataError`.
        image_id: only used to name the record in errors.

    Raises:
        DataError: the file is missing, corrupt, truncated, or its size disagrees with the json.
    """
    path = Path(path)
    who = f"image {path}" + (f" (image id {image_id})" if image_id is not None else "")
    try:
        with Image.open(path) as raw:
            raw.load()
            orientation = _exif_orientation(raw)
            shown = ImageOps.exif_transpose(raw) if orientation != 1 else raw
            if expected_size is None or shown.size == tuple(expected_size):
                img = shown
            elif raw.size == tuple(expected_size):
                img = raw  # annotated in stored pixels: keep boxes aligned with them
            else:
                raise DataError(
                    f"{who} is {shown.size[0]}x{shown.size[1]} (width x height, after EXIF orientation "
                    f"{orientation}) but the annotations say {expected_size[0]}x{expected_size[1]}; "
                    f"fix width/height in the annotation file or replace the image"
                )
            array = _to_rgb_uint8(img)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{who} does not exist") from None
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{who} is too large for Pillow's safety limit ({e}); raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # what Pillow raises for corrupt/truncated data
        raise DataError(
            f"{who} is corrupt or truncated and cannot be decoded ({e}); re-export or remove it"
        ) from None
    return tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1).contiguous())


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` uint8 from any Pillow mode (see :func:`load_image` for the rules)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return np.array(img, dtype=np.uint8)  # a writable copy: torch warns on read-only arrays
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        out = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.round(out).astype(np.uint8)
    if mode.startswith("I") or mode == "F":
        gray = _scale_to_uint8(np.asarray(img), sixteen_bit=mode.startswith("I;16"))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("1", "L"):
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _scale_to_uint8(a: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if sixteen_bit or (lo >= 0 and 255 < hi <= 65535):
        scale = 255.0 / 65535.0  # fixed 16-bit range: the same mapping for every image
    elif lo >= 0 and hi <= 255:
        scale = 1.0 if hi > 1.0 or not np.any(a % 1) else 255.0  # float data in [0, 1] -> x255
    elif hi > lo:
        return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    else:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round(np.clip(a * scale, 0, 255)).astype(np.uint8)


# --------------------------------------------------------------------------- dataset


class CocoDetection(torch.utils.data.Dataset):
    """``(image, target)`` samples of a :class:`CocoIndex`, optionally transformed.

    ``image`` is a ``tv_tensors.Image`` uint8 ``[3, H, W]`` RGB and ``target`` a dict:

    - ``boxes``: ``tv_tensors.BoundingBoxes`` ``[N, 4]`` float32, XYXY, absolute pixels,
      ``canvas_size=(H, W)``; crowd annotations excluded.
    - ``labels``: ``[N]`` int64 contiguous labels.
    - ``image_id``: the COCO image id (int).
    - ``orig_size``: ``[2]`` int64 ``(H, W)`` of the image as loaded, kept through transforms
      so predictions can be mapped back.

    ``transform`` is called as ``transform(image, target)`` (any ``transforms.v2`` pipeline).
    :meth:`set_epoch` forwards the epoch to the transform when it has a ``set_epoch``.
    """

    def __init__(self, index: CocoIndex, transform: Transform | None = None) -> None:
        self.index = index
        self.transform = transform
        self.epoch = 0
        # precomputed once: __getitem__ should not loop over python records
        self._targets = [index.training_targets(r.id) for r in index.images]

    @classmethod
    def from_files(
        cls, annotations: str | Path, images: str | Path | None = None, transform: Transform | None = None
    ) -> CocoDetection:
        return cls(load_coco(annotations, images), transform)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.index.class_names

    def __len__(self) -> int:
        return len(self.index.images)

    def set_epoch(self, epoch: int) -> None:
        """Tell the transform (and any epoch policy in it) which epoch is starting."""
        self.epoch = int(epoch)
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(self.epoch)  # type: ignore[union-attr]

    def load_sample(self, i: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """Sample ``i`` before any transform."""
        rec = self.index.images[i]
        image = load_image(rec.path, expected_size=(rec.width, rec.height), image_id=rec.id)
        h, w = image.shape[-2:]
        boxes, labels = self._targets[i]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes.clone(), format="XYXY", canvas_size=(h, w)),
            "labels": labels.clone(),
            "image_id": rec.id,
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
        return image, target

    def __getitem__(self, i: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image, target = self.load_sample(i)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target
