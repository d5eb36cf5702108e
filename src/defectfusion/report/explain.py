"""Figures and files of an explanation: why each box got its class, similarity maps, text matches.

:func:`write_explanation` writes ``explanation.png`` (one figure per image: per detection its
evidence map, the look-alike map and its score's parts; :mod:`.explain_figure`),
``similarity_maps.png``, ``detection_matches.png``, ``explanation.json`` (all numbers: per-level
maps, per-class summaries, every detection's similarities and logit terms) and
``similarity_maps.npz`` (every map at the image's size) for an
:class:`~defectfusion.structures.Explanation` (computed by :mod:`defectfusion.engine.explain.explainer`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ..io import atomic_path, atomic_write_json
from ..structures import Explanation
from . import plots
from .explain_figure import plot_explanation

__all__ = ["ExplainFiles", "plot_detection_matches", "plot_similarity_maps", "write_explanation"]


def plot_similarity_maps(expl: Explanation, path: str | os.PathLike, cols: int = 4, alpha: float = 0.55) -> Path:
    """The image with its detections, one panel per class (its similarity map over the image), and the
    best-matching class per pixel.

    All class panels share one colour scale, so a class whose text matches the image less is
    darker everywhere; the brightest class at a place is the text that matches it best.
    """
    from matplotlib.colors import Normalize

    names = expl.class_names
    n_panels = len(names) + 2  # detections, one per class, the best-matching class per pixel
    cols = max(1, min(cols, n_panels))
    rows = math.ceil(n_panels / cols)
    H, W = expl.size
    cell_w = 3.2  # inches per panel
    img_h = cell_w * H / W
    title_h, head_h, bar_w = 0.55, 0.75, 0.9
    fig_w = cols * cell_w + (cols - 1) * 0.12 + bar_w
    fig_h = rows * img_h + (rows - 1) * title_h + title_h + head_h
    maps = expl.maps.numpy()
    norm = Normalize(float(maps.min()), float(maps.max()) if maps.max() > maps.min() else float(maps.min()) + 1e-6)
    gray = plots.grayscale(expl.image)
    shares = expl.best_class_share()
    det_labels = {d.label for d in expl.detections}
    with plots.figure(fig_w, fig_h) as fig:
        grid = fig.add_gridspec(
            rows,
            cols + 1,
            width_ratios=[cell_w] * cols + [0.18],
            wspace=0.12 / cell_w,
            hspace=title_h / img_h,
            left=0.0,
            right=1.0 - (bar_w - 0.18 - 0.12) / fig_w,
            bottom=0.0,
            top=1.0 - (title_h + head_h) / fig_h,
        )
        ax0 = fig.add_subplot(grid[0, 0])
        drawn = plots.draw_detections(
            expl.image,
            {
                "boxes": [d.box for d in expl.detections],
                "labels": [d.label for d in expl.detections],
                "scores": [d.score for d in expl.detections],
            },
            names,
            resize_to=max(480, max(H, W)),
        )
        ax0.imshow(np.asarray(drawn), interpolation="lanczos")
        ax0.set_title(f"detections (score ≥ {expl.threshold:g})", fontsize=9.5)
        ax0.set_axis_off()
        image_artist = None
        for c, name in enumerate(names):
            k = c + 1
            ax = fig.add_subplot(grid[k // cols, k % cols])
            ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
            image_artist = ax.imshow(maps[c], cmap="turbo", norm=norm, alpha=alpha, interpolation="bilinear")
            mark = " ◆" if c in det_labels else ""
            ax.set_title(
                f"{name}{mark}\nmax {maps[c].max():.2f} · best match on {100 * shares[c]:.0f}% of the image",
                fontsize=9,
                color=plots.class_hex(c),
                fontweight="bold",
            )
            ax.set_axis_off()
        k = len(names) + 1
        ax = fig.add_subplot(grid[k // cols, k % cols])
        palette = np.array([plots.class_color(c) for c in range(len(names))], dtype=np.float32) / 255.0
        best = palette[maps.argmax(0)]
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
        ax.imshow(best, alpha=alpha, interpolation="nearest")
        ax.set_title("best-matching class text per pixel\n(colours of the panel titles)", fontsize=9)
        ax.set_axis_off()
        cax = fig.add_subplot(grid[:, cols])
        bar = fig.colorbar(image_artist, cax=cax)
        bar.set_label("cosine similarity: image feature vs class text")
        fig.suptitle(
            f"Text-visual similarity per class{' · ' + Path(expl.source).name if expl.source else ''}\n"
            f"features projected by {expl.map_head} (one colour scale for all classes; ◆ = class detected)",
            fontsize=10.5,
        )
        return plots.save_figure(fig, path)


def plot_detection_matches(expl: Explanation, path: str | os.PathLike, top: int = 6) -> Path:
    """For each detection: its crop and the similarity of its query feature to each class text (bars)."""
    names = expl.class_names
    dets = expl.detections
    k = min(top, len(names))
    rows = max(1, len(dets))
    with plots.figure(8.4, 0.7 + rows * max(1.25, 0.28 * k + 0.45)) as fig:
        if not dets:
            ax = fig.add_subplot(1, 1, 1)
            ax.set_axis_off()
            ax.text(
                0.5,
                0.5,
                f"no detections with score ≥ {expl.threshold:g}",
                ha="center",
                va="center",
                fontsize=11,
                color=plots.NEUTRAL,
            )
            fig.suptitle("What each detection matched in text", fontsize=11)
            return plots.save_figure(fig, path)
        # the middle column is room for the class names of the bars' y axis
        grid = fig.add_gridspec(rows, 3, width_ratios=[1, 1.35, 3.4], wspace=0.04, hspace=0.55)
        values = np.array([d.similarity for d in dets])
        lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
        pad = 0.08 * (hi - lo or 1.0)
        for r, d in enumerate(dets):
            crop_ax = fig.add_subplot(grid[r, 0])
            x1, y1, x2, y2 = d.box
            H, W = expl.size
            m = 0.15 * max(x2 - x1, y2 - y1, 4)
            ix1, iy1 = max(0, int(x1 - m)), max(0, int(y1 - m))
            ix2, iy2 = min(W, int(math.ceil(x2 + m))), min(H, int(math.ceil(y2 + m)))
            crop = expl.image[iy1 : max(iy2, iy1 + 1), ix1 : max(ix2, ix1 + 1)]
            crop_ax.imshow(crop, interpolation="lanczos" if crop.shape[0] > 24 else "nearest")
            crop_ax.add_patch(
                Rectangle(
                    (x1 - ix1 - 0.5, y1 - iy1 - 0.5),
                    x2 - x1,
                    y2 - y1,
                    fill=False,
                    lw=2,
                    edgecolor=plots.class_hex(d.label),
                )
            )
            crop_ax.set_axis_off()
            crop_ax.set_title(f"#{r + 1}", fontsize=9)
            ax = fig.add_subplot(grid[r, 2])
            matches = d.top_matches(names, k)
            ys = np.arange(len(matches))[::-1]
            colors = [plots.class_hex(names.index(n)) for n, _ in matches]
            bars = ax.barh(ys, [v for _, v in matches], color=colors, height=0.7)
            for (n, v), y, b in zip(matches, ys, bars, strict=True):
                chosen = n == d.class_name
                if chosen:
                    b.set_edgecolor("black")
                    b.set_linewidth(1.4)
                ax.text(
                    v + (pad * 0.15 if v >= 0 else -pad * 0.15),
                    y,
                    f"{v:.2f}",
                    va="center",
                    ha="left" if v >= 0 else "right",
                    fontsize=8,
                    fontweight="bold" if chosen else "normal",
                )
            ax.set_yticks(ys, [n for n, _ in matches], fontsize=8.5)
            for lab, (n, _) in zip(ax.get_yticklabels(), matches, strict=True):
                if n == d.class_name:
                    lab.set_fontweight("bold")
            ax.set_xlim(lo - (2.5 * pad if lo < 0 else pad), hi + 2.5 * pad)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            if r < rows - 1:
                ax.tick_params(labelbottom=False)
            ax.axvline(0, color="#999999", lw=0.8)
            ax.grid(True, axis="x", color="#EEEEEE")
            ax.set_axisbelow(True)
            ax.set_title(
                f"#{r + 1} detected {d.class_name} ({d.score:.2f}) · query {d.query}",
                fontsize=9.5,
                loc="left",
                color=plots.class_hex(d.label),
                fontweight="bold",
            )
            if r == rows - 1:
                ax.set_xlabel("cosine similarity of the query feature to each class text")
        fig.suptitle(
            f"What each detection matched in text (bold: the class detected)\n"
            f"query features projected by {expl.query_head}",
            fontsize=10.5,
        )
        return plots.save_figure(fig, path)


@dataclass
class ExplainFiles:
    """What :func:`write_explanation` wrote (None: not asked for)."""

    json: Path
    explanation_png: Path | None = None
    maps_png: Path | None = None
    matches_png: Path | None = None
    npz: Path | None = None

    def all(self) -> list[Path]:
        return [p for p in (self.explanation_png, self.maps_png, self.matches_png, self.json, self.npz) if p]


def write_explanation(
    expl: Explanation, out_dir: str | os.PathLike, *, all_figures: bool = True, save_maps: bool = True
) -> ExplainFiles:
    """Write ``explanation.png`` and ``explanation.json``; with ``all_figures`` also the similarity-map and
    text-match figures, with ``save_maps`` every map at the image's size (``similarity_maps.npz``, float16
    for the attribution kinds)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ExplainFiles(out / "explanation.json")
    if "gradcam" in expl.class_maps:
        files.explanation_png = plot_explanation(expl, out / "explanation.png", expl.default_kind)
    if all_figures or not expl.class_maps:
        files.maps_png = plot_similarity_maps(expl, out / "similarity_maps.png")
        files.matches_png = plot_detection_matches(expl, out / "detection_matches.png")
    data = expl.to_json()
    if save_maps:
        files.npz = out / "similarity_maps.npz"
        data["maps"]["file"] = files.npz.name
    atomic_write_json(files.json, data)
    if files.npz is None:
        return files
    # every map kind per class, and each detection's maps, at the image's size
    arrays = {"maps": expl.maps.numpy().astype(np.float32), "classes": np.array(expl.class_names)}
    for kind, maps in expl.class_maps.items():
        if kind != "similarity":
            arrays[f"class_{kind}"] = maps.numpy().astype(np.float16)
    for i, d in enumerate(expl.detections):
        for kind, m in d.maps.items():
            arrays[f"detection{i + 1}_{kind}"] = m.numpy().astype(np.float16)
    with atomic_path(files.npz, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return files
