"""Boxes drawn on images, and a grid of images with their detections and ground truth."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image, ImageDraw, ImageFont

from ...errors import DefectFusionError
from .style import (
    DPI,
    class_color,
    class_hex,
    figure,
    save_figure,
)


# ----------------------------------------------------------------------------------------------
# boxes on images
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from matplotlib import font_manager

    try:
        path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold"))
        return ImageFont.truetype(path, size)
    except (OSError, ValueError):
        return ImageFont.load_default(size=size)


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return im.convert("RGB")
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.transpose(array, (1, 2, 0))  # CHW tensor -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.clip(array.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    if array.ndim not in (2, 3):
        raise DefectFusionError(f"draw_detections: image must have shape [H, W, 3] or [H, W], got {list(array.shape)}")
    return Image.fromarray(array).convert("RGB")


def _array(x: Any, dtype: Any) -> np.ndarray:
    if x is None:
        return np.zeros((0,), dtype=dtype)
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _boxes(obj: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(boxes [N,4], labels [N], scores [N] or None) from Detections, a dict or a (boxes, labels) pair."""
    if obj is None:
        return np.zeros((0, 4)), np.zeros((0,), dtype=np.int64), None
    if isinstance(obj, Mapping):
        boxes, labels, scores = obj.get("boxes"), obj.get("labels"), obj.get("scores")
    elif isinstance(obj, (tuple, list)):
        boxes, labels = obj[0], obj[1]
        scores = obj[2] if len(obj) > 2 else None
    else:
        boxes, labels, scores = obj.boxes, obj.labels, getattr(obj, "scores", None)
    b = _array(boxes, np.float64).reshape(-1, 4)
    lab = _array(labels, np.int64).reshape(-1)
    s = None if scores is None else _array(scores, np.float64).reshape(-1)
    if len(lab) != len(b) or (s is not None and len(s) != len(b)):
        raise DefectFusionError(
            f"draw_detections: boxes, labels and scores must have the same length, got "
            f"{len(b)}, {len(lab)}, {None if s is None else len(s)}"
        )
    return b, lab, s


def _dashed_rect(draw: ImageDraw.ImageDraw, box: Sequence[float], color: tuple[int, int, int], width: int) -> None:
    x1, y1, x2, y2 = box
    dash = max(6, width * 4)
    for (ax_, ay), (bx, by) in (
        ((x1, y1), (x2, y1)),
        ((x2, y1), (x2, y2)),
        ((x2, y2), (x1, y2)),
        ((x1, y2), (x1, y1)),
    ):
        length = math.hypot(bx - ax_, by - ay)
        steps = max(1, int(length // dash))
        for i in range(steps):
            t0, t1 = i / steps, (i + 1) / steps
            fill = color if i % 2 == 0 else (255, 255, 255)
            draw.line(
                [(ax_ + (bx - ax_) * t0, ay + (by - ay) * t0), (ax_ + (bx - ax_) * t1, ay + (by - ay) * t1)],
                fill=fill,
                width=width,
            )


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def _overlaps(r: tuple[float, float, float, float], placed: list[tuple[float, float, float, float]]) -> bool:
    return any(r[0] < q[2] and q[0] < r[2] and r[1] < q[3] and q[1] < r[3] for q in placed)


def _tag(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    fill: tuple[int, int, int],
    font: Any,
    image_size: tuple[int, int],
    below: bool,
    placed: list[tuple[float, float, float, float]],
    outline: tuple[int, int, int] | None = None,
) -> None:
    """A filled label box with ``text`` above (or below) ``xy``, inside the image, clear of ``placed`` labels."""
    left, _, right, _ = draw.textbbox((0, 0), text, font=font, anchor="la")
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font.size, 0)
    pad = max(2, (ascent + descent) // 6)
    w, h = right - left + 2 * pad, ascent + descent + 2 * pad
    x = min(max(0, xy[0]), max(0, image_size[0] - w))
    first = xy[1] if below else xy[1] - h
    step = h if below else -h
    # the preferred place, then stacked away from the box, then the other side
    candidates = [first + k * step for k in range(4)] + [first - (k + 1) * step for k in range(3)]
    for y in candidates:
        y = min(max(0, y), max(0, image_size[1] - h))
        if not _overlaps((x, y, x + w, y + h), placed):
            break
    else:
        y = min(max(0, first), max(0, image_size[1] - h))
    placed.append((x, y, x + w, y + h))
    draw.rectangle([x, y, x + w - 1, y + h - 1], fill=fill, outline=outline, width=1 if outline else 0)
    text_fill = _text_color(fill) if outline is None else (0, 0, 0)
    draw.text((x + pad - left, y + pad), text, fill=text_fill, font=font, anchor="la")


def draw_detections(
    image: Any,
    detections: Any,
    class_names: Sequence[str],
    gt: Any = None,
    score_threshold: float = 0.0,
    max_detections: int = 100,
    resize_to: int | None = None,
) -> Image.Image:
    """Draw predicted boxes (solid, class colour, ``NAME 0.87``) and ground truth (dashed, ``GT NAME``).

    Args:
        image: uint8 ``[H, W, 3]`` array, ``[3, H, W]`` tensor, PIL image or image path.
        detections: :class:`~defectfusion.structures.Detections` (pixel xyxy, scores, contiguous
            labels), a dict with ``boxes/labels/scores``, or ``None``.
        class_names: name of each contiguous label.
        gt: ground truth as ``(boxes_xyxy, labels)``, a dict or a Detections; drawn dashed.
        score_threshold: predictions below this score are not drawn.
        max_detections: draw at most this many predictions (highest scores first).
        resize_to: resize the image (and boxes) so its longer side has this many pixels before
            drawing, so that lines and labels are crisp at that size (e.g. small images in a grid).
    Returns:
        A new RGB image (the input is not modified); line width and font follow its size.
    """
    canvas = _to_pil(image).copy()
    scale = 1.0
    if resize_to and max(canvas.size) != resize_to:
        scale = resize_to / max(canvas.size)
        resample = Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS
        canvas = canvas.resize((max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale))), resample)
    draw = ImageDraw.Draw(canvas)
    short = min(canvas.size)
    width = max(2, round(short / 220))
    font = _font(int(min(48, max(12, round(8 + 0.02 * short)))))

    def name(label: int) -> str:
        return class_names[label] if 0 <= label < len(class_names) else f"class {label}"

    gb, gl, _ = _boxes(gt)
    for box, label in zip(gb * scale, gl, strict=True):
        _dashed_rect(draw, box, class_color(label), width)
    db, dl, ds = _boxes(detections)
    if ds is None:
        ds = np.ones(len(db))
    keep = np.where(ds >= score_threshold)[0]
    keep = keep[np.argsort(-ds[keep], kind="stable")][:max_detections]
    # draw low scores first so the most confident boxes and labels end on top
    for i in keep[::-1]:
        draw.rectangle(list(db[i] * scale), outline=class_color(dl[i]), width=width)
    # labels: the most confident predictions choose their place first, then the ground truth
    placed: list[tuple[float, float, float, float]] = []
    for i in keep:
        box = db[i] * scale
        _tag(
            draw,
            (box[0], box[1]),
            f"{name(dl[i])} {ds[i]:.2f}",
            class_color(dl[i]),
            font,
            canvas.size,
            below=False,
            placed=placed,
        )
    for box, label in zip(gb * scale, gl, strict=True):
        _tag(
            draw,
            (box[0], box[3]),
            f"GT {name(label)}",
            (255, 255, 255),
            font,
            canvas.size,
            below=True,
            placed=placed,
            outline=class_color(label),
        )
    return canvas


@dataclass
class GridItem:
    """One cell of an image grid: an image, its predictions, its ground truth and a caption."""

    image: Any
    detections: Any = None
    gt: Any = None
    title: str | None = None


def _grid_item(item: Any) -> GridItem:
    if isinstance(item, GridItem):
        return item
    if isinstance(item, Mapping):
        return GridItem(item["image"], item.get("detections"), item.get("gt"), item.get("title"))
    if isinstance(item, (tuple, list)):
        return GridItem(*item)
    return GridItem(item)


def _caption(it: Any, k: int, score_threshold: float, max_detections: int) -> str:
    """A grid cell's title: the item's own (or ``image k``) and how many predictions and boxes it shows."""
    caption = it.title or f"image {k + 1}"
    counts = []
    if it.detections is not None:
        b, _, s = _boxes(it.detections)
        shown = len(b) if s is None else int(np.sum(s >= score_threshold))
        counts.append(f"{shown} pred" + (f" (top {max_detections} drawn)" if shown > max_detections else ""))
    if it.gt is not None:
        counts.append(f"{len(_boxes(it.gt)[0])} GT")
    return caption + ("  ·  " + " / ".join(counts) if counts else "")


def plot_image_grid(
    items: Sequence[Any],
    path: str | os.PathLike,
    class_names: Sequence[str],
    cols: int = 4,
    title: str | None = None,
    score_threshold: float = 0.25,
    cell_px: int = 480,
    max_detections: int = 20,
) -> Path:
    """A grid of images with predictions (solid) and ground truth (dashed) drawn, and a colour legend.

    ``items``: :class:`GridItem`, dicts with the same keys, ``(image, detections, gt, title)``
    tuples, or bare images (PIL / arrays), e.g. already drawn with :func:`draw_detections`.
    At most ``max_detections`` predictions (the most confident) are drawn per image, so a poorly
    calibrated model does not bury the image; the caption says when more passed the threshold.
    """
    items = [_grid_item(it) for it in items]
    if not items:
        raise DefectFusionError("plot_image_grid: no images to draw")
    cols = max(1, min(cols, len(items)))
    rows = math.ceil(len(items) / cols)
    drawn = []
    for it in items:
        if it.detections is None and it.gt is None:
            im = _to_pil(it.image)
            im = im.resize(
                (
                    max(1, round(im.width * cell_px / max(im.size))),
                    max(1, round(im.height * cell_px / max(im.size))),
                ),
                Image.Resampling.LANCZOS,
            )
        else:
            im = draw_detections(
                it.image, it.detections, class_names, it.gt, score_threshold, max_detections, resize_to=cell_px
            )
        drawn.append(im)
    # cells as tall as the tallest image: no empty bands for wide images
    cell_w = cell_px / DPI
    cell_h = max(im.height / im.width for im in drawn) * cell_w
    captions = [_caption(it, k, score_threshold, max_detections) for k, it in enumerate(items[: len(drawn)])]
    # captions wrapped to the cell's width (about 6.5 px a character at 9 pt): long ones never run into the next
    wrapped = [textwrap.fill(c, width=max(20, int(cell_px / 6.5))) for c in captions]
    lines = max((w.count("\n") + 1 for w in wrapped), default=1)
    title_h, head_h, foot_h = 0.2 + 0.16 * lines, 0.55, 0.45
    height = rows * (cell_h + title_h) + head_h + foot_h
    with figure(cols * cell_w, height) as fig:
        axes = fig.subplots(rows, cols, squeeze=False)
        fig.subplots_adjust(
            left=0.0,
            right=1.0,
            bottom=foot_h / height,
            top=1.0 - head_h / height,
            wspace=0.03,
            hspace=title_h / cell_h,
        )
        for k, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if k >= len(drawn):
                continue
            ax.imshow(np.asarray(drawn[k]), interpolation="none")
            ax.set_title(wrapped[k], fontsize=9)
        used = sorted(
            {int(x) for it in items for obj in (it.detections, it.gt) if obj is not None for x in _boxes(obj)[1]}
        )
        handles = [
            Patch(color=class_hex(i), label=class_names[i] if i < len(class_names) else f"class {i}") for i in used
        ]
        handles.append(Line2D([], [], color="#333333", lw=2, label="solid: prediction (score)"))
        handles.append(Line2D([], [], color="#333333", lw=2, ls="--", label="dashed: ground truth"))
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 5),
            frameon=False,
            fontsize=9,
            bbox_to_anchor=(0.5, 0.0),
        )
        heading = title or "Validation images: predictions and ground truth"
        if score_threshold > 0:
            heading += f" (score ≥ {score_threshold:g})"
        fig.suptitle(heading, fontsize=12)
        return save_figure(fig, path)
