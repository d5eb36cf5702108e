"""Figures of the explanation maps' quality: each kind beside its controls.

``quality`` maps a kind to an object with an ``overall`` mapping (the pointing game, AUROC,
chance and their ``_interval`` keys); ``comparisons`` maps a kind to the dict of a map comparison
(``vs_control`` and ``class_specificity``, each metric ``{"mean", "interval", "pairs"}``).
:func:`plot_examples` draws (image, class) pairs with their maps and boxes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Rectangle

from . import style

METRICS = (("pointing_game", "pointing game"), ("auroc", "AUROC"))
MARKERS = {"pointing_game": "o", "auroc": "s"}
EPS = 1e-9  # an interval bound within this of 0 counts as 0, as in the readings


def _errors(values: list[float], intervals: list[Any]) -> np.ndarray:
    return np.array([[v - iv[0], iv[1] - v] if iv else [0.0, 0.0] for v, iv in zip(values, intervals, strict=True)]).T


def plot_quality(quality: Mapping[str, Any], path: str | os.PathLike, control: str | None = None) -> Path:
    """Pointing game beside its chance level and AUROC beside 0.5, per map kind; the control kind's
    value and interval drawn across each panel (a kind inside that band restates the detections)."""
    kinds = list(quality)
    with style.figure(max(6.0, 1.6 * len(kinds) + 2.5), 3.4) as fig:
        axes = fig.subplots(1, 2)
        x = np.arange(len(kinds))
        for ax, (key, _) in zip(axes, METRICS, strict=True):
            values = [quality[k].overall.get(key) or 0.0 for k in kinds]
            intervals = [quality[k].overall.get(f"{key}_interval") for k in kinds]
            colors = [style.NEUTRAL if k == control else style.class_hex(i) for i, k in enumerate(kinds)]
            ax.bar(x, values, color=colors, yerr=_errors(values, intervals), capsize=3)
            if key == "pointing_game":
                refs, ref_label = [quality[k].overall.get("chance") or 0.0 for k in kinds], "chance"
            else:
                refs, ref_label = [0.5] * len(kinds), "no information (0.5)"
            ax.scatter(x, refs, marker="_", s=600, color="black", label=ref_label, zorder=3)
            if control in quality and quality[control].overall.get(key) is not None:
                o = quality[control].overall
                ax.axhline(o[key], color=style.NEUTRAL, linestyle="--", linewidth=1, label=f"control ({control})")
                if o.get(f"{key}_interval"):
                    ax.axhspan(*o[f"{key}_interval"], color=style.NEUTRAL, alpha=0.15, linewidth=0)
            ax.set_xticks(x, kinds, rotation=15)
            ax.set_ylim(0, 1)
            ax.set_title("pointing game (hit rate)" if key == "pointing_game" else "AUROC: objects vs background")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        return style.save_figure(fig, path)


def plot_controls(comparisons: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Per kind, the difference from the control kind and right class minus wrong class, with intervals."""
    kinds = list(comparisons)
    with style.figure(9.0, max(2.4, 0.45 * len(kinds) + 1.4)) as fig:
        axes = fig.subplots(1, 2, sharey=True)
        y = np.arange(len(kinds))[::-1].astype(float)
        panels = (("vs_control", "minus the control"), ("class_specificity", "right class minus wrong class"))
        for ax, (part, title) in zip(axes, panels, strict=True):
            for offset, (key, label) in zip((0.12, -0.12), METRICS, strict=True):
                for yi, kind in zip(y, kinds, strict=True):
                    d = comparisons[kind].get(part, {}).get(key) or {}
                    if d.get("mean") is None:
                        continue
                    low, high = d.get("interval") or (d["mean"], d["mean"])
                    color = style.GAIN if low > EPS else style.LOSS if high < -EPS else style.NEUTRAL
                    ax.plot([low, high], [yi + offset] * 2, color=color, linewidth=2)
                    ax.plot([d["mean"]], [yi + offset], marker=MARKERS[key], color=color, linestyle="none")
                ax.plot([], [], marker=MARKERS[key], color="black", linestyle="none", label=label)
            ax.axvline(0.0, color="black", linewidth=0.8)
            ax.set_yticks(y, kinds)
            ax.set_title(title)
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        style.note(axes[0], "green: interval above 0, red: below, grey: contains 0")
        return style.save_figure(fig, path)


def plot_examples(examples: Sequence[Any], class_names: Sequence[str], path: str | os.PathLike, title: str) -> Path:
    """A row of (image, class) pairs: the map over the image, the class's boxes, a cross at the map's maximum."""
    n = max(1, len(examples))
    with style.figure(2.6 * n, 3.0) as fig:
        axes = np.atleast_1d(fig.subplots(1, n))
        for ax, ex in zip(axes[: len(examples)], examples, strict=True):
            gray = ex.image.astype(np.float32).mean(-1) / 255.0
            ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
            m = ex.class_map
            span = float(m.max() - m.min()) or 1.0
            ax.imshow((m - m.min()) / span, cmap="magma", alpha=0.55, vmin=0, vmax=1)
            for x1, y1, x2, y2 in ex.boxes:
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="cyan", linewidth=1.2))
            y, x = np.unravel_index(int(np.argmax(m)), m.shape)
            ax.plot([x], [y], marker="x", color="lime" if ex.quality.hit else "red", markersize=9, mew=2)
            auc = "–" if ex.quality.auroc is None else f"{ex.quality.auroc:.2f}"
            ax.set_title(f"{class_names[ex.quality.label]}\n{ex.folder.name}: AUROC {auc}", fontsize=8)
            ax.set_axis_off()
        for ax in axes[len(examples) :]:
            ax.set_axis_off()
        fig.suptitle(title, fontsize=10)
        return style.save_figure(fig, path)
