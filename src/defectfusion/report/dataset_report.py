"""The dataset-check report: ``report.md``, a self-contained ``report.html``, ``dataset_check.json`` and plots.

:func:`write_dataset_report` draws the figures of a :class:`~defectfusion.data.dataset_check.DatasetCheck`
(image sizes, aspect ratios, box sizes at the model size, boxes per class, example crops per
class) and writes the report with :func:`.markdown.write_report`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator, NullLocator
from PIL import Image, ImageOps

from ..data.dataset_check import HARD_PX, PROBLEM_KINDS, DatasetCheck, LoadedSplit
from ..io import atomic_write_json
from .markdown import Section, write_report
from .plots.style import MODEL_COLORS, class_hex, figure, save_figure

CROPS_PER_CLASS = 8
CROP_PX = 72  # side of one example crop in the strip
MAX_PROBLEM_LINES = 200  # problems listed in report.md / .html (all of them are in the json)


def write_dataset_report(check: DatasetCheck, splits: list[LoadedSplit], out_dir: str | os.PathLike) -> list[Path]:
    """Write the report into ``out_dir``; returns the files written (report.md, report.html, json, plots)."""
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    json_path = out / "dataset_check.json"
    atomic_write_json(json_path, check.to_dict())
    figs = {
        "sizes": plot_image_sizes(check, plots / "image_sizes.png"),
        "aspect": plot_aspect_ratios(check, plots / "aspect_ratios.png"),
        "boxes": plot_box_sizes(check, plots / "box_sizes.png"),
        "classes": plot_class_counts(check, plots / "boxes_per_class.png"),
    }
    examples = plot_examples(splits, plots / "examples.png")
    md, html = write_report(out, "Dataset check", _sections(check, figs, examples))
    return [md, html, json_path, *figs.values(), *([examples] if examples else [])]


def _sections(check: DatasetCheck, figs: dict[str, Path], examples: Path | None) -> list[Section]:
    n = check.image_size
    counts = check.problem_counts()
    verdict = (
        f"**{len(check.problems)} problem(s)**: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        if check.problems
        else "**No problems found.**"
    )
    tiling = "**advised**" if check.tiling_advised else "not needed"
    overview = (
        f"{verdict}\n\n- recommended input size: **{check.recommended_size} px** (checked at {n} px)\n"
        f"- tiling: {tiling}: {check.tiling_reason}\n"
        f"- rule: the smallest candidate size at which the 10th-percentile box side (the square root of its "
        f"area: a long thin scratch is not tiny) is at least {HARD_PX} px; compute per image grows as the square "
        f"of the input side; tiling when more than 10% of boxes stay under {HARD_PX} px at the largest candidate, "
        f"or the median image is over twice that size."
    )
    split_rows = [
        {
            "split": s.name,
            "images": s.num_images,
            "empty images": s.num_empty_images,
            "boxes": s.num_boxes,
            "imbalance (most/least)": s.imbalance_ratio,
            f"small @{n}": s.size_classes["small"],
            f"medium @{n}": s.size_classes["medium"],
            f"large @{n}": s.size_classes["large"],
            f"< {HARD_PX} px @{n}": f"{s.share_under_hard:.1%}",
        }
        for s in check.splits
    ]
    class_rows = [
        {"class": c, **{s.name: s.boxes_per_class.get(c, 0) for s in check.splits}} for c in check.class_names
    ]
    size_rows = [{"input size": k, "p10 box side, √area (px)": v} for k, v in check.p10_side_px.items()]
    sections = [
        Section("Overview", overview, table=split_rows),
        Section(
            "Boxes per class",
            "An empty class (0 boxes in a split) cannot be learned or scored there.",
            table=class_rows,
            images=[(figs["classes"], "boxes per class and split")],
        ),
        Section(
            "Box sizes at the model input size",
            f"Boxes scaled by the plain resize to {n}x{n}; COCO small < 32², medium < 96². Boxes of area under "
            f"{HARD_PX}² will be hard to detect; a box's side here is the square root of its area.",
            table=size_rows,
            images=[(figs["boxes"], f"box side (√area) at {n} px")],
        ),
        Section(
            "Images",
            images=[(figs["sizes"], "image width and height"), (figs["aspect"], "aspect ratio (width / height)")],
        ),
    ]
    if examples is not None:
        sections.append(Section("Examples per class", images=[(examples, "example crops, one row per class")]))
    lines = [p.line().replace("`", "'") for p in check.problems[:MAX_PROBLEM_LINES]]
    more = len(check.problems) - len(lines)
    kinds = [{"kind": k, "what": v, "count": counts.get(k, 0)} for k, v in PROBLEM_KINDS.items()]
    text = ("```\n" + "\n".join(lines) + "\n```" if lines else "None.") + (
        f"\n\n... and {more} more (all in dataset_check.json)" if more > 0 else ""
    )
    sections.append(Section("Problems", text, table=kinds))
    return sections


# --------------------------------------------------------------------------- figures


def _split_color(i: int) -> str:
    return MODEL_COLORS[(i + 1) % len(MODEL_COLORS)]


def _shared_bins(values: list[list[float]], count: int = 20, integer: bool = False) -> np.ndarray:
    """The same bins for every split, a window around the value when all values are equal."""
    flat = np.concatenate([np.asarray(v, dtype=float) for v in values] + [np.zeros(0)])
    lo, hi = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 1.0)
    if hi - lo < (count if integer else 1e-6):
        pad = count / 2 if integer else max(0.05 * abs(lo), 0.05)
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, count + 1)


def plot_image_sizes(check: DatasetCheck, path: Path) -> Path:
    """Histograms of image width and height, one line per split."""
    with figure(9, 3.4) as fig:
        for k, (attr, label) in enumerate((("image_widths", "width (px)"), ("image_heights", "height (px)"))):
            ax = fig.add_subplot(1, 2, k + 1)
            bins = _shared_bins([getattr(s, attr) for s in check.splits], integer=True)
            for i, s in enumerate(check.splits):
                v = getattr(s, attr)
                if v:
                    ax.hist(v, bins=bins, histtype="step", linewidth=1.6, color=_split_color(i), label=s.name)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(label)
            ax.set_ylabel("images")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend()
        fig.suptitle("Image sizes")
        return save_figure(fig, path)


def plot_aspect_ratios(check: DatasetCheck, path: Path) -> Path:
    """Histogram of image aspect ratio (width / height), one line per split."""
    with figure(6.5, 3.4) as fig:
        ax = fig.add_subplot()
        per_split = [[w / h for w, h in zip(s.image_widths, s.image_heights, strict=True)] for s in check.splits]
        bins = _shared_bins(per_split)
        for i, (s, ratios) in enumerate(zip(check.splits, per_split, strict=True)):
            if ratios:
                ax.hist(ratios, bins=bins, histtype="step", linewidth=1.6, color=_split_color(i), label=s.name)
        ax.set_xlabel("aspect ratio (width / height)")
        ax.set_ylabel("images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("Aspect ratios")
        ax.legend()
        return save_figure(fig, path)


def plot_box_sizes(check: DatasetCheck, path: Path) -> Path:
    """Histogram (log x) of the box side (square root of the area) at the model size, the hard threshold marked."""
    with figure(6.5, 3.4) as fig:
        ax = fig.add_subplot()
        values = [np.asarray(s.box_side_px, dtype=float) for s in check.splits]
        flat = np.concatenate([v[v > 0] for v in values] + [np.zeros(0)])
        if flat.size:
            lo, hi = float(flat.min()), float(flat.max())
            bins = np.geomspace(min(lo, HARD_PX / 2), max(hi, HARD_PX * 2), 30)
            for i, (s, v) in enumerate(zip(check.splits, values, strict=True)):
                if (v > 0).any():
                    ax.hist(v[v > 0], bins=bins, histtype="step", linewidth=1.6, color=_split_color(i), label=s.name)
            ax.set_xscale("log")
            # plain labels at powers of two (the report style turns off mathtext, so no 10^k labels)
            ticks = [2**k for k in range(0, 13) if bins[0] <= 2**k <= bins[-1]]
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.legend()
        ax.axvline(HARD_PX, color="#B2182B", linestyle="--", linewidth=1.2)
        ax.set_xlabel(f"box side (√area) at {check.image_size}x{check.image_size} (px)")
        ax.set_ylabel("boxes")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"Box sizes at the model input size (dashed: {HARD_PX} px)")
        return save_figure(fig, path)


def plot_class_counts(check: DatasetCheck, path: Path) -> Path:
    """Grouped bars: boxes per class, one bar per split."""
    names = check.class_names
    with figure(max(6.5, 0.9 * len(names) + 2), 3.8) as fig:
        ax = fig.add_subplot()
        x = np.arange(len(names))
        width = 0.8 / max(1, len(check.splits))
        for i, s in enumerate(check.splits):
            counts = [s.boxes_per_class.get(c, 0) for c in names]
            ax.bar(x + i * width - 0.4 + width / 2, counts, width, color=_split_color(i), label=s.name)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("boxes")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("Boxes per class")
        ax.legend()
        return save_figure(fig, path)


def _crop(image: Image.Image, bbox: tuple[float, float, float, float]) -> Image.Image:
    x1, y1, x2, y2 = bbox
    pad = 0.15 * max(x2 - x1, y2 - y1) + 2
    box = (max(0, x1 - pad), max(0, y1 - pad), min(image.width, x2 + pad), min(image.height, y2 + pad))
    return ImageOps.pad(image.crop(tuple(int(round(v)) for v in box)), (CROP_PX, CROP_PX), color=(255, 255, 255))


def plot_examples(splits: list[LoadedSplit], path: Path) -> Path | None:
    """One row per class of up to :data:`CROPS_PER_CLASS` crops (spread over the first split with boxes)."""
    if not splits:
        return None
    index = next((s.index for s in splits if any(s.index.annotations.values())), splits[0].index)
    per_class: list[list[tuple[Path, tuple[float, float, float, float]]]] = [[] for _ in index.class_names]
    for rec in index.images:
        for a in index.annotations[rec.id]:
            if not a.iscrowd:
                per_class[a.label].append((rec.path, a.bbox))
    if not any(per_class):
        return None
    cache: dict[Path, Image.Image] = {}
    strips = []
    for items in per_class:
        picks = (
            [items[int(i)] for i in np.linspace(0, len(items) - 1, min(CROPS_PER_CLASS, len(items)))] if items else []
        )
        strip = Image.new("RGB", (CROPS_PER_CLASS * (CROP_PX + 4), CROP_PX), (255, 255, 255))
        for k, (p, bbox) in enumerate(picks):
            if p not in cache:
                with Image.open(p) as im:
                    cache[p] = ImageOps.exif_transpose(im).convert("RGB")
            strip.paste(_crop(cache[p], bbox), (k * (CROP_PX + 4), 0))
        strips.append(strip)
    with figure(CROPS_PER_CLASS * 1.0 + 1.5, 1.05 * len(strips) + 0.3) as fig:
        for i, (name, strip) in enumerate(zip(index.class_names, strips, strict=True)):
            ax = fig.add_subplot(len(strips), 1, i + 1)
            ax.imshow(np.asarray(strip))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            n = len(per_class[i])
            ax.set_ylabel(f"{name}\n({n})", rotation=0, ha="right", va="center", color=class_hex(i), fontsize=9)
        return save_figure(fig, path)


__all__ = [
    "plot_aspect_ratios",
    "plot_box_sizes",
    "plot_class_counts",
    "plot_examples",
    "plot_image_sizes",
    "write_dataset_report",
]
