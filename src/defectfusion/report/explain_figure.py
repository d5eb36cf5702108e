"""One figure per image that says, in plain words, why each box got its class.

``explanation.png``: a row per detection (the best few): a map of the explanation's default kind
over the image with the box drawn (titled with what the map computes, not with what it is hoped to
show: whether a kind shows where the class decision came from is measured, against a control that
knows only the detections, by ``explain --annotations --faithfulness``), what pushed it towards its
class rather than the look-alike (for a detection of the confusable pair), and a bar chart of its
score's parts (the detector's own evidence, the descriptions' part, the box-quality term): an exact
split, not an estimate.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle

from ..structures import DetectionMatch, Explanation
from . import plots

ROWS = 3  # detections shown


def _box(ax, d: DetectionMatch, color: str) -> None:
    x1, y1, x2, y2 = d.box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.8, edgecolor=color))


TITLES = {  # what a panel of each map kind computes, for a detection of class {name}
    "sampling": "where its queries sampled\nthe features ({name})",
    "gradcam": "gradient x feature of\nits {name} logit",
    "pixel": "gradient x pixel of\nits {name} score",
    "text_gradcam": "gradient x feature of\nits {name} text term",
}


def _map_panel(ax, expl: Explanation, d: DetectionMatch, kind: str) -> None:
    ax.imshow(plots.grayscale(expl.image), cmap="gray", vmin=0, vmax=1)
    m = d.maps.get(kind)
    if m is not None and float(m.max()) > 0:
        values = m.numpy()
        ax.imshow(values / float(values.max()), cmap="magma", alpha=0.6, vmin=0, vmax=1)
    _box(ax, d, "cyan")
    ax.set_title(TITLES.get(kind, kind + " for {name}").format(name=d.class_name), fontsize=8.5)
    ax.set_axis_off()


def _pair_panel(ax, expl: Explanation, d: DetectionMatch, kind: str) -> None:
    m = d.maps.get("pair")
    if m is None or d.pair_margin is None:
        # not of the confusable pair: the evidence map, unless that is already the left panel
        _map_panel(ax, expl, d, "gradcam" if kind != "gradcam" else "sampling")
        return
    ax.imshow(plots.grayscale(expl.image), cmap="gray", vmin=0, vmax=1)
    values = m.numpy()
    span = float(np.abs(values).max()) or 1.0
    ax.imshow(values, cmap="coolwarm", norm=TwoSlopeNorm(0.0, -span, span), alpha=0.65)
    other = d.pair_margin["against"]
    ax.set_title(f"red: towards {d.class_name}\nblue: towards {other}", fontsize=8.5)
    _box(ax, d, "black")
    ax.set_axis_off()


def _terms_panel(ax, expl: Explanation, d: DetectionMatch) -> None:
    p = d.logit_parts
    labels = ["detector's own", "descriptions\n(text)", "box quality\n(LQE)"]
    values = [p["base"], p["text"], p["quality"]]
    colors = ["#4C72B0", "#DD8452", "#8C8C8C"]
    ys = np.arange(len(values))[::-1]
    ax.barh(ys, values, color=colors, height=0.6)
    ax.axvline(0, color="#999999", lw=0.8)
    ax.set_yticks(ys, labels, fontsize=8)
    for y, v in zip(ys, values, strict=True):
        ax.text(v, y, f" {v:+.2f} ", va="center", ha="left" if v >= 0 else "right", fontsize=8)
    lo, hi = min(0.0, *values), max(0.0, *values)
    pad = 0.35 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_title(f"score {d.score:.2f} = sigmoid({p['logit']:+.2f}),\nthe sum of these terms", fontsize=8.5)
    lines = ["text it matched best: " + ", ".join(f"{n} {v:.2f}" for n, v in d.top_matches(expl.class_names, 3))]
    if d.pair_margin:
        m = d.pair_margin
        share = f"{100 * m['text'] / m['margin']:.0f}%" if abs(m["margin"]) > 1e-6 else "–"
        lines.append(
            f"vs {m['against']}: ahead by {m['margin']:+.2f}, of which the text gave {m['text']:+.2f} ({share})"
        )
    lines.append(f"text gate {p['gate']:.3f} (0 = the descriptions are switched off)")
    ax.set_xlabel("\n".join(lines), fontsize=7.5, loc="left")


def plot_explanation(expl: Explanation, path: str | os.PathLike, kind: str = "sampling", rows: int = ROWS) -> Path:
    """The image's detections, then per detection: its evidence map, the look-alike map, its score's parts."""
    dets = expl.detections[:rows]
    H, W = expl.size
    cell = 2.9
    img_h = cell * H / W
    n_rows = 1 + len(dets)
    with plots.figure(3 * cell + 1.6, 0.9 + img_h + len(dets) * max(img_h, 2.2) + 0.35 * len(dets)) as fig:
        grid = fig.add_gridspec(
            n_rows, 3, width_ratios=[1, 1, 1.3], height_ratios=[0.8] + [1.0] * len(dets), hspace=0.75, wspace=0.55
        )
        ax = fig.add_subplot(grid[0, :2])
        drawn = plots.draw_detections(
            expl.image,
            {"boxes": [d.box for d in dets], "labels": [d.label for d in dets], "scores": [d.score for d in dets]},
            expl.class_names,
            resize_to=max(480, max(H, W)),
        )
        ax.imshow(np.asarray(drawn))
        ax.set_title(f"{len(expl.detections)} detection(s) with score ≥ {expl.threshold:g}", fontsize=9)
        ax.set_axis_off()
        note = fig.add_subplot(grid[0, 2])
        note.set_axis_off()
        note.text(
            0.0,
            0.5,
            "Each row below is one box.\n"
            "Left: an explanation map (bright = more); how\nfar each kind is faithful: its map_quality.json.\n"
            "Middle: logit(class) - logit(look-alike), or\ngradient x feature of its logit.\n"
            "Right: how its score was made (exact).",
            fontsize=8.5,
            va="center",
        )
        if not dets:
            note.text(0.0, 0.1, "No box passed the threshold.", fontsize=9, color=plots.NEUTRAL)
        for r, d in enumerate(dets, start=1):
            _map_panel(fig.add_subplot(grid[r, 0]), expl, d, kind)
            _pair_panel(fig.add_subplot(grid[r, 1]), expl, d, kind)
            _terms_panel(fig.add_subplot(grid[r, 2]), expl, d)
            fig.axes[-3].text(
                0,
                -0.08,
                f"box {r}: {d.class_name} {d.score:.2f}",
                transform=fig.axes[-3].transAxes,
                fontsize=9,
                fontweight="bold",
                color=plots.class_hex(d.label),
                va="top",
            )
        title = Path(expl.source).name if expl.source else "image"
        fig.suptitle(f"Why each box got its class · {title}", fontsize=11)
        return plots.save_figure(fig, path)
