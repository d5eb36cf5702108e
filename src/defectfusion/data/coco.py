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
- Images are read by :func:`defectfusion.data.images.load_image` (RGB ``uint8``, EXIF applied).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors

from ..errors import DataError
from .coco_schema import (
    CocoAnnotationRecord,
    CocoImageRecord,
    ann_name,
    capped,
    check_references,
    is_int,
    is_number,
    parse_categories,
    parse_images,
    read_categories,
    read_coco_json,
)
from .images import displayed_size, load_image

__all__ = [
    "CocoAnnotationRecord",
    "CocoDetection",
    "CocoImageRecord",
    "CocoIndex",
    "CocoWarning",
    "load_coco",
    "parse_categories",
    "read_categories",
]


Transform = Callable[[tv_tensors.Image, dict[str, Any]], tuple[tv_tensors.Image, dict[str, Any]]]


class CocoWarning(UserWarning):
    """A recoverable problem in a COCO dataset (boxes dropped or clipped)."""


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
                f"cannot be used: " + "; ".join(capped(problems))
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
                {"id": r.id, "file_name": r.file_name, "width": r.width, "height": r.height} for r in self.images
            ],
            "annotations": anns,
            "categories": [
                {"id": cid, "name": name} for cid, name in zip(self.label_to_category_id, self.class_names, strict=True)
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
    data = read_coco_json(ann_path)
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
    records = parse_images(data["images"], ann_path, images_dir)
    _check_files_exist(records, ann_path, images_dir)
    records = [_fill_missing_size(r, ann_path) for r in records]

    by_image: dict[int, list[CocoAnnotationRecord]] = {r.id: [] for r in records}
    sizes = {r.id: (r.width, r.height) for r in records}
    anns = data["annotations"]
    check_references(anns, ann_path, cat_to_label, sizes)

    used_ids = {a["id"] for a in anns if is_int(a.get("id"))}
    next_id = max(used_ids, default=0) + 1
    dropped: list[str] = []
    clipped: list[str] = []
    for i, a in enumerate(anns):
        if is_int(a.get("id")):
            ann_id = a["id"]
        else:  # pycocotools indexes by id: give id-less records fresh ones
            ann_id, next_id = next_id, next_id + 1
        where = ann_name(a, i)
        bbox = a.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
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
        area = float(a["area"]) if is_number(a.get("area")) else (x2 - x1) * (y2 - y1)
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
                f"their image ({', '.join(capped(dropped, 5))})"
            )
        if clipped:
            parts.append(
                f"clipped {len(clipped)} box(es) extending outside their image to its bounds "
                f"({', '.join(capped(clipped, 5))})"
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


def _check_files_exist(records: list[CocoImageRecord], path: Path, images_dir: Path) -> None:
    missing = [r.file_name for r in records if not r.path.is_file()]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} of {len(records)} image file(s) are not in {images_dir}: "
            f"{', '.join(capped(missing))}. Pass the right images folder or remove those records."
        )


def _fill_missing_size(rec: CocoImageRecord, path: Path) -> CocoImageRecord:
    """Read width/height from the file header when the json omits them (displayed size)."""
    if rec.width > 0:
        return rec
    try:
        w, h = displayed_size(rec.path)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {rec.path} (id {rec.id} in {path}) cannot be opened: {e}") from None
    return CocoImageRecord(rec.id, rec.file_name, rec.path, w, h)


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
