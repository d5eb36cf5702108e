"""Surfaces, finished images and the written dataset (images + COCO json + descriptions).

See the package docstring for what is drawn.
"""

from __future__ import annotations

import importlib.resources
import io
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DataError
from ...io import atomic_write_bytes, atomic_write_dir, atomic_write_json
from .defects import (
    CATEGORIES,
    DEFECT_SCALES,
    DESCRIPTIONS_RESOURCE,
    EMPTY_FRACTION,
    MAX_COVER,
    MAX_IOU,
    MAX_OBJECTS,
    MIN_SIZE,
    PLANNERS,
    SMALL_SCALES,
    SMALL_SIDES,
    SPLITS,
    Box,
    Canvas,
    SplitSummary,
    SynthObject,
    SynthSummary,
    image_rng,
)

PLASTIC = np.array(
    [[0.75, 0.75, 0.74], [0.88, 0.87, 0.84], [0.28, 0.29, 0.31], [0.20, 0.33, 0.60], [0.62, 0.16, 0.12],
     [0.85, 0.70, 0.18], [0.22, 0.46, 0.28]],
    dtype=np.float32,
)  # fmt: skip
PAINT = np.array(
    [[0.90, 0.72, 0.10], [0.35, 0.50, 0.38], [0.55, 0.57, 0.58], [0.25, 0.40, 0.62], [0.85, 0.42, 0.12],
     [0.80, 0.80, 0.76]],
    dtype=np.float32,
)  # fmt: skip


def _box_blur(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Running mean of length ``k`` along ``axis`` (wrapping), via a cumulative sum."""
    if k <= 1:
        return a
    pad = np.concatenate([np.take(a, range(-k, 0), axis=axis), a], axis=axis)
    c = np.cumsum(pad, axis=axis, dtype=np.float32)
    n = a.shape[axis]
    return (np.take(c, range(k, k + n), axis=axis) - np.take(c, range(0, n), axis=axis)) / k


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bilinearly."""
    coarse = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32))
    return np.asarray(coarse.resize((size, size), Image.BILINEAR), dtype=np.float32)


@lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """Real CC0 surfaces shipped with scikit-image, or none when it is not installed (extra ``demo``)."""
    try:
        from skimage import data

        # Gravel only: brick's straight mortar lines are unlabelled "scratches" on every image.
        return (np.asarray(data.gravel(), dtype=np.float32) / 255.0,)
    except (ImportError, OSError, ValueError):  # not installed, or an old version that downloads them
        return ()


def _surface(rng: np.random.Generator, n: int) -> np.ndarray:
    # metal 35%, plastic 25%, paint 25%, a real texture 15%
    kind = int(np.searchsorted([0.35, 0.6, 0.85], rng.random(), side="right"))
    textures = _textures()
    if kind == 3 and not textures:
        kind = 2
    if kind == 0:  # brushed metal: streaks along one axis
        base = rng.uniform(0.45, 0.78) + rng.uniform(-0.04, 0.04, 3)
        streak = _box_blur(_box_blur(rng.standard_normal((n, n), dtype=np.float32), int(rng.integers(15, 60)), 1), 2, 0)
        streak /= streak.std() + 1e-6
        if rng.random() < 0.5:
            streak = streak.T
        tone = 1 + rng.uniform(0.04, 0.09) * streak + 0.06 * _smooth_noise(rng, n, 4)
    elif kind == 1:  # plastic: smooth, low-frequency variation
        base = PLASTIC[rng.integers(len(PLASTIC))] * rng.uniform(0.9, 1.1)
        tone = 1 + rng.uniform(0.03, 0.08) * _smooth_noise(rng, n, int(rng.integers(3, 8)))
    elif kind == 2:  # painted: flat colour, orange peel and speckle
        base = PAINT[rng.integers(len(PAINT))] * rng.uniform(0.9, 1.1)
        peel = _box_blur(_box_blur(rng.standard_normal((n, n), dtype=np.float32), 3, 0), 3, 1)
        speck = (rng.random((n, n)) < rng.uniform(0.01, 0.04)) * rng.uniform(-0.25, 0.25, (n, n))
        tone = 1 + 0.06 * peel + speck.astype(np.float32)
    else:  # a real texture, cropped, rescaled and tinted
        tex = textures[rng.integers(len(textures))]
        crop = int(rng.integers(min(128, tex.shape[0]), tex.shape[0] + 1))
        y, x = rng.integers(0, tex.shape[0] - crop + 1, 2)
        patch = Image.fromarray(tex[y : y + crop, x : x + crop]).resize((n, n), Image.BILINEAR)
        t = np.asarray(patch, dtype=np.float32)
        t = (t - t.mean()) / (t.std() + 1e-6)
        base = rng.uniform(0.45, 0.7) + rng.uniform(-0.06, 0.06, 3)
        tone = 1 + rng.uniform(0.06, 0.12) * t
    return np.clip(tone[..., None] * base.astype(np.float32), 0, 1).astype(np.float32)


def _blur3(img: np.ndarray, sigma: float) -> np.ndarray:
    """Slight optical blur: a separable 3-tap Gaussian (enough for sigma below 1 px)."""
    w = float(np.exp(-1 / (2 * sigma**2)))
    p = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
    img = (p[1:-1] + w * (p[:-2] + p[2:])) / (1 + 2 * w)
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return (p[:, 1:-1] + w * (p[:, :-2] + p[:, 2:])) / (1 + 2 * w)


def _finish(rng: np.random.Generator, c: Canvas) -> np.ndarray:
    """Lighting gradient towards the light, vignette, a slight blur and sensor noise -> uint8 RGB."""
    n = c.size
    t = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    ramp, vignette, gain = rng.uniform(0.1, 0.35), rng.uniform(0, 0.3), rng.uniform(0.85, 1.15)
    light = gain * (
        1 + ramp * (t[None] * c.light[0] + t[:, None] * c.light[1]) - vignette * (t[None] ** 2 + t[:, None] ** 2)
    )
    img = np.clip(c.img * light[..., None], 0, 1)
    sigma = rng.uniform(0, 0.7)
    if sigma > 0.3:
        img = _blur3(img, sigma)
    img = img * 255 + rng.standard_normal((n, n, 1), dtype=np.float32) * rng.uniform(2, 6)  # luminance noise
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _overlaps(a: Box, b: Box) -> bool:
    """IoU above :data:`MAX_IOU`, or one box mostly inside the other (a hole under a stain)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return False
    inter, area_a, area_b = iw * ih, (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter) > MAX_IOU or inter / min(area_a, area_b) > MAX_COVER


def _place(c: Canvas, rng: np.random.Generator, ext: Box, placed: list[Box]) -> tuple[float, float] | None:
    """An offset putting ``ext`` inside the image without covering earlier objects (a few tries)."""
    size = c.size
    for _attempt in range(8):
        dx = rng.uniform(1 - ext[0], size - 1 - ext[2])
        dy = rng.uniform(1 - ext[1], size - 1 - ext[3])
        where = (ext[0] + dx, ext[1] + dy, ext[2] + dx, ext[3] + dy)
        if not any(_overlaps(where, p) for p in placed):
            return dx, dy
    return None


def _record(objects: list[SynthObject], placed: list[Box], cat: int, box: Box) -> None:
    placed.append(box)
    x0, y0, x1, y1 = (round(float(v), 2) for v in box)
    objects.append(SynthObject(cat, (x0, y0, round(x1 - x0, 2), round(y1 - y0, 2))))


def _small_objects(c: Canvas, rng: np.random.Generator) -> list[SynthObject]:
    """Small defects (longer side :data:`SMALL_SIDES` px) spread over a large surface.

    Each object is drawn at its own scale; one whose painted box falls outside the size range is
    undone (its window restored), so every recorded box is 12-48 px on its longer side.
    No image is drawn empty: tiles of a large image without a defect are the negatives.
    """
    size = c.size
    count = int(rng.integers(*small_count_range(size)))  # no blank images: most of a large one is blank already
    placed: list[Box] = []
    objects: list[SynthObject] = []
    lo, hi = SMALL_SIDES
    for _ in range(count):
        cat = int(rng.integers(len(CATEGORIES)))
        for _plan in range(4):  # the extent includes padding: aim it a little above the range's bottom
            ext, paint = PLANNERS[cat](rng, float(rng.uniform(*SMALL_SCALES)))
            if lo + 2 <= max(ext[2] - ext[0], ext[3] - ext[1]) <= hi + 6:
                break
        else:
            continue
        offset = _place(c, rng, ext, placed)
        if offset is None:
            continue
        dx, dy = offset
        ys = slice(max(0, int(ext[1] + dy) - 4), min(size, int(ext[3] + dy) + 5))
        xs = slice(max(0, int(ext[0] + dx) - 4), min(size, int(ext[2] + dx) + 5))
        before = c.img[ys, xs].copy()
        box = paint(c, dx, dy)
        side = 0.0 if box is None else max(box[2] - box[0], box[3] - box[1])
        if box is None or not lo <= side <= hi or min(box[2] - box[0], box[3] - box[1]) < 2:
            c.img[ys, xs] = before  # undo: a defect of the wrong size would be an unlabelled one
            continue
        _record(objects, placed, cat, box)
    return objects


def small_count_range(size: int) -> tuple[int, int]:
    """``[low, high)`` number of small defects drawn on a ``size`` px image: about 1-4 per 512 x 512 px."""
    cells = max(1.0, (size / 512) ** 2)
    return max(2, round(cells)), max(3, round(4 * cells) + 1)


def render_image(
    rng: np.random.Generator, size: int, defect_scale: str = "normal"
) -> tuple[np.ndarray, list[SynthObject]]:
    """Draw one image and its objects.

    ``defect_scale``: ``"normal"`` draws 0 or 4..12 objects sized relative to the image (designed
    at 256 px); ``"small"`` draws several defects of 12-48 px (longer side) whatever the image
    size, the case sliced inference is for.

    Returns:
        ``(image, objects)``: ``image`` is ``[size, size, 3]`` uint8 RGB; each object holds its
        category id (0..5, see :data:`CATEGORIES`) and tight COCO box ``[x, y, w, h]`` in pixels.
    """
    if defect_scale not in DEFECT_SCALES:
        raise DataError(f"synthetic data: defect scale must be one of {list(DEFECT_SCALES)}, got {defect_scale!r}")
    angle = rng.uniform(0, 2 * np.pi)
    c = Canvas(_surface(rng, size), np.array([np.cos(angle), np.sin(angle)], dtype=np.float32), size / 256)
    if defect_scale == "small":
        objects = _small_objects(c, rng)
        return _finish(rng, c), objects
    # several objects per image: a detector learns from every one of them in a step
    count = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(4, MAX_OBJECTS + 1))
    placed: list[Box] = []
    objects: list[SynthObject] = []
    for _ in range(count):
        cat = int(rng.integers(len(CATEGORIES)))
        ext, paint = PLANNERS[cat](rng, c.scale)
        w, h = ext[2] - ext[0], ext[3] - ext[1]
        if w > size - 2 or h > size - 2:
            continue
        offset = _place(c, rng, ext, placed)
        if offset is None:
            continue
        box = paint(c, *offset)
        if box is None or box[2] - box[0] < 2 or box[3] - box[1] < 2:
            continue
        _record(objects, placed, cat, box)
    return _finish(rng, c), objects


# --------------------------------------------------------------------------- writing


def _check_args(out: Path, train: int, val: int, size: int, seed: int) -> None:
    for name, value, low in (
        ("train", train, 0),
        ("val", val, 0),
        ("size", size, MIN_SIZE),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(f"synthetic data: {name} must be an integer, got {value!r}")
        if value < low:
            raise DataError(f"synthetic data: {name} must be >= {low}, got {value}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"synthetic data: out folder {str(out)!r} cannot be created ({e}); choose another path") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise DataError(f"synthetic data: out folder {str(out)!r} is not writable; choose another path")


def _coco(images: list[dict], annotations: list[dict], size: int, seed: int, defect_scale: str) -> dict:
    info = {"description": "defectfusion synthetic industrial defects", "size": size, "seed": seed}
    if defect_scale != "normal":  # the default's files stay as they were
        info["defect_scale"] = defect_scale
    return {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": "defect"} for i, name in enumerate(CATEGORIES)],
    }


def _write_split(
    tmp: Path, split_index: int, count: int, size: int, seed: int, defect_scale: str, tick: Callable[[], None]
) -> tuple[int, dict[str, int]]:
    (tmp / "images").mkdir()
    images, annotations = [], []
    counts = dict.fromkeys(CATEGORIES, 0)
    for index in range(count):
        pixels, objects = render_image(image_rng(seed, split_index, index), size, defect_scale)
        name = f"{index:06d}.png"
        buf = io.BytesIO()
        Image.fromarray(pixels).save(
            buf, format="PNG", compress_level=1
        )  # 4x faster, no larger: noise barely compresses
        (tmp / "images" / name).write_bytes(buf.getvalue())
        image_id = index + 1  # COCO ids start at 1: pycocotools treats id 0 as "unmatched"
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for obj in objects:
            x, y, w, h = obj.bbox
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": obj.category_id,
                 "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0}
            )  # fmt: skip
            counts[CATEGORIES[obj.category_id]] += 1
        tick()
    atomic_write_json(tmp / "annotations.json", _coco(images, annotations, size, seed, defect_scale))
    empty = count - len({a["image_id"] for a in annotations})
    return empty, counts


def _build_split(
    target: Path, split_index: int, count: int, size: int, seed: int, defect_scale: str, tick: Callable[[], None]
) -> SplitSummary:
    """One split, built in a temporary folder and moved into place whole."""
    result: list[tuple[int, dict[str, int]]] = []
    atomic_write_dir(
        target, lambda tmp: result.append(_write_split(tmp, split_index, count, size, seed, defect_scale, tick))
    )
    empty, counts = result[0]
    return SplitSummary(target.name, target / "images", target / "annotations.json", count, empty, counts)


def generate_synthetic_dataset(
    out: Path | str,
    *,
    train: int = 400,
    val: int = 100,
    test: int = 0,
    size: int = 256,
    seed: int = 0,
    defect_scale: str = "normal",
    progress: bool = False,
) -> SynthSummary:
    """Write a synthetic six-class industrial-defect dataset in COCO format.

    Layout: ``out/{train,val,test}/images/NNNNNN.png`` with ``out/{split}/annotations.json`` (no
    ``test/`` folder when ``test`` is 0)
    (category ids 0..5 named as in :data:`CATEGORIES`; image ids start at 1) and
    ``out/descriptions.yml``, a copy of the packaged six-class descriptions. Each split is built
    in a temporary folder and moved into place whole, replacing an earlier split of the same
    name. The same arguments give the same bytes. ``defect_scale="small"``: several defects of
    12-48 px per image (see :func:`render_image`), for large images and sliced inference.

    Raises:
        DataError: a negative count or seed, ``size`` below 64, an unknown ``defect_scale``, or an
            unwritable ``out``.
    """
    out = Path(out)
    _check_args(out, train, val, size, seed)
    if defect_scale not in DEFECT_SCALES:
        raise DataError(f"synthetic data: defect scale must be one of {list(DEFECT_SCALES)}, got {defect_scale!r}")
    if isinstance(test, bool) or not isinstance(test, (int, np.integer)) or test < 0:
        raise DataError(f"synthetic data: test must be an integer >= 0, got {test!r}")
    from tqdm.auto import tqdm

    bar = tqdm(total=train + val + test, desc="synthetic data", unit="img", disable=not progress)
    splits: dict[str, SplitSummary] = {}
    try:
        for split_index, (name, count) in enumerate(zip(SPLITS, (train, val, test), strict=True)):
            if name == "test" and not count:
                continue
            splits[name] = _build_split(out / name, split_index, count, size, seed, defect_scale, lambda: bar.update(1))
        descriptions = out / "descriptions.yml"
        source = importlib.resources.files("defectfusion").joinpath(DESCRIPTIONS_RESOURCE)
        atomic_write_bytes(descriptions, source.read_bytes())
    except OSError as e:
        raise DataError(f"synthetic data: writing to out folder {str(out)!r} failed ({e})") from e
    finally:
        bar.close()
    return SynthSummary(out, descriptions, size, seed, splits)
