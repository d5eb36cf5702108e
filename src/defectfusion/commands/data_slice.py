"""``defectfusion data slice``: a COCO set of large images cut into overlapping tiles, for training.

A detector trained on tiles sees small defects at native resolution, as sliced inference
(:mod:`defectfusion.engine.prediction.tiling`, ``predict --tiles``) later shows them. The tile grid is the
inference grid (:func:`~defectfusion.engine.prediction.tiling.tile_grid`), so training and inference cut alike.

    OUT/images/<image id>_<stem>_x<X>_y<Y>.png   each tile (PNG, lossless)
    OUT/annotations.json                         the tiles as COCO images (written last, atomically)

A box cut by a tile border is clipped to the tile and kept when the visible part holds at least
``min_visible`` of its area; otherwise it is dropped (a sliver of a defect teaches nothing but
to fire on fragments). Each tile record also names its source image (``source_image_id``) and
its offset in it (``tile_x``, ``tile_y``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.coco import load_coco
from ..data.images import load_image
from ..engine.prediction.tiling import check_tiling, tile_grid
from ..errors import ConfigError, DataError
from ..io import atomic_path, atomic_write_json


@dataclass(frozen=True)
class SliceSummary:
    """What :func:`slice_dataset` wrote and how many boxes the tile borders cost."""

    out: Path
    annotations: Path
    num_source_images: int
    num_tiles: int
    num_empty_tiles: int
    boxes_kept: int
    boxes_dropped: int  # (box, tile) pairs where the visible piece was under min_visible


def cut_boxes(
    boxes: np.ndarray, tile: tuple[int, int, int, int], min_visible: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``[N, 4]`` xyxy (image pixels) as seen by ``tile`` ``(x0, y0, x1, y1)``.

    Returns:
        ``(kept, clipped, cut)``: a bool mask ``[N]`` of the boxes overlapping the tile whose visible
        area is at least ``min_visible`` of their own, and their boxes ``[K, 4]`` clipped to the
        tile in tile pixels, and ``cut`` ``[N]``: the boxes overlapping the tile too little to keep.
    """
    x0, y0, x1, y1 = tile
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = np.stack(
        [
            np.clip(boxes[:, 0], x0, x1),
            np.clip(boxes[:, 1], y0, y1),
            np.clip(boxes[:, 2], x0, x1),
            np.clip(boxes[:, 3], y0, y1),
        ],
        1,
    )
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    overlapping = (w > 0) & (h > 0)
    kept = overlapping & (w * h >= min_visible * area - 1e-9)
    return kept, clipped[kept] - np.array([x0, y0, x0, y0], dtype=np.float64), overlapping & ~kept


def slice_dataset(
    annotations: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tile: int,
    overlap: float = 0.2,
    min_visible: float = 0.5,
    empty_fraction: float = 1.0,
    seed: int = 0,
    images: str | os.PathLike | None = None,
    progress: bool = True,
) -> SliceSummary:
    """Cut every image of a COCO set into ``tile`` px tiles and write them as a COCO set (see the module docstring).

    Args:
        annotations: the COCO json of the large images (``images``: their folder, default as :func:`load_coco`).
        out: output folder (``images/`` and ``annotations.json`` in it).
        tile, overlap: the tile side in pixels and the fraction neighbours share.
        min_visible: keep a cut box when at least this fraction of its area lies in the tile.
        empty_fraction: share of the tiles without any box that are kept (seeded by ``seed``):
            small defects leave most tiles empty, and a few negatives are enough.

    Raises:
        ConfigError: a bad tile size, overlap, ``min_visible`` or ``empty_fraction``.
        DataError: an invalid annotations file or unreadable image, or an unwritable ``out``.
    """
    check_tiling(tile, overlap)
    if not 0.0 < min_visible <= 1.0:
        raise ConfigError(f"--min-visible must be a fraction in (0, 1], got {min_visible}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ConfigError(f"--empty-fraction must be in [0, 1], got {empty_fraction}")
    index = load_coco(annotations, images)
    out = Path(out)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"data slice: out folder {str(out)!r} cannot be created ({e}); choose another path") from e
    rng = np.random.default_rng(seed)
    from tqdm.auto import tqdm

    records: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    empty = dropped = 0
    for rec in tqdm(index.images, desc="slicing", unit="img", disable=not progress):
        pixels = load_image(rec.path, expected_size=(rec.width, rec.height), image_id=rec.id)
        pixels = pixels.permute(1, 2, 0).numpy()
        source = index.annotations[rec.id]
        boxes = np.array([a.bbox for a in source], dtype=np.float64).reshape(-1, 4)
        for x0, y0, x1, y1 in tile_grid(rec.height, rec.width, tile, overlap):
            kept, clipped, cut = cut_boxes(boxes, (x0, y0, x1, y1), min_visible)
            dropped += int(cut.sum())
            if not kept.any():
                empty += 1
                if rng.random() >= empty_fraction:
                    continue
            image_id = len(records) + 1
            name = f"{rec.id}_{Path(rec.file_name).stem}_x{x0}_y{y0}.png"
            _save_png(pixels[y0:y1, x0:x1], out / "images" / name)
            records.append(
                {"id": image_id, "file_name": name, "width": x1 - x0, "height": y1 - y0,
                 "source_image_id": rec.id, "tile_x": x0, "tile_y": y0}
            )  # fmt: skip
            for ann, box in zip((a for a, k in zip(source, kept, strict=True) if k), clipped, strict=True):
                bx, by, bw, bh = (round(float(v), 2) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1]))
                anns.append(
                    {"id": len(anns) + 1, "image_id": image_id, "category_id": ann.category_id,
                     "bbox": [bx, by, bw, bh], "area": round(bw * bh, 2), "iscrowd": int(ann.iscrowd)}
                )  # fmt: skip
    categories = [
        {"id": cid, "name": name} for cid, name in zip(index.label_to_category_id, index.class_names, strict=True)
    ]
    info = {"description": f"tiles of {index.annotations_file}", "tile": tile, "overlap": overlap,
            "min_visible": min_visible}  # fmt: skip
    target = out / "annotations.json"
    atomic_write_json(target, {"info": info, "images": records, "annotations": anns, "categories": categories})
    # tiles an earlier run into this folder wrote (another grid) would only mislead: the json is the set
    current = {r["file_name"] for r in records}
    for stale in (out / "images").glob("*.png"):
        if stale.name not in current:
            stale.unlink()
    return SliceSummary(out, target, len(index.images), len(records), empty, len(anns), dropped)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    try:
        with atomic_path(path, suffix=".png") as tmp:
            Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG", compress_level=1)
    except OSError as e:
        raise DataError(f"data slice: writing {path} failed ({e}); check the out folder") from e
