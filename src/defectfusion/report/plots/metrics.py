"""Figures of evaluation metrics: confusion matrix, PR curves, AP bars (one model or several).

Undefined metrics (``None`` in ``metrics.json``) are never drawn as 0: they are left out and
named in a note on the figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.patches import Patch, Rectangle

from ...errors import DefectFusionError
from ...structures import Metrics
from ..compare import compare_many
from ..values import METRICS, MISSING, MetricsLike, as_number, check_metrics, confusion_matrix, delta, fmt_delta
from .style import (
    GAIN,
    LOSS,
    MODEL_COLORS,
    NEUTRAL,
    class_hex,
    figure,
    note,
    save_figure,
)


# ----------------------------------------------------------------------------------------------
# confusion matrix
# ----------------------------------------------------------------------------------------------
def _confusion(cm: MetricsLike) -> Mapping[str, Any]:
    return confusion_matrix(cm, "plot_confusion_matrix")


def _row_normalized(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = counts / totals
    out[totals[:, 0] == 0] = np.nan
    return out


def plot_confusion_matrix(
    cm: MetricsLike,
    path: str | os.PathLike,
    normalized: bool = False,
    highlight: tuple[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw the detection confusion matrix (rows: ground truth, columns: prediction).

    Args:
        cm: the evaluator's ``confusion_matrix`` dict (or a metrics dict holding one).
        path: PNG to write.
        normalized: show row-normalised fractions (each ground-truth row sums to 1) instead of
            counts. Rows without ground truth are undefined and shown as ``–``.
        highlight: a pair of class names whose two confusion cells are outlined in red,
            e.g. ``("ROTURA_FRACTURA", "RAYONES_ARANAZOS")``.
    """
    cm = _confusion(cm)
    labels = [str(x) for x in cm["labels"]]
    n = len(labels)
    counts = np.asarray(cm["counts"], dtype=float)
    if normalized:
        given = cm.get("normalized")
        if given is not None and len(given) == n and all(len(r) == n for r in given):
            values = np.array([[np.nan if v is None else float(v) for v in r] for r in given], dtype=float)
        else:
            values = _row_normalized(counts)
    else:
        values = counts
    has_bg = labels[-1].lower() == "background"

    side = max(6.0, 0.85 * n + 2.6)
    with figure(side + 1.2, side) as fig:
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#EEEEEE")
        if normalized:
            norm: Normalize = Normalize(0.0, 1.0)
        else:
            norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=max(1.0, float(np.nanmax(counts)) if counts.size else 1.0))
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="equal")
        cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        cbar.set_label("fraction of the ground-truth row" if normalized else "number of boxes")

        fontsize = 10 if n <= 8 else 8 if n <= 12 else 6
        for i in range(n):
            for j in range(n):
                v = values[i, j]
                if not np.isfinite(v):
                    text, color = MISSING, NEUTRAL
                else:
                    text = f"{v:.2f}" if normalized else f"{int(round(v))}"
                    dark = norm(v) > 0.55
                    color = "white" if dark else ("#999999" if v == 0 else "black")
                weight = "bold" if i == j and np.isfinite(v) and v > 0 else "normal"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color, fontweight=weight)

        row_totals = counts.sum(axis=1).astype(int)
        ylabels = [f"{name}  (n={total})" for name, total in zip(labels, row_totals, strict=True)]
        ax.set_xticks(range(n), labels, rotation=40, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n), ylabels)
        if has_bg:
            for tick in (ax.get_xticklabels()[-1], ax.get_yticklabels()[-1]):
                tick.set_fontstyle("italic")
                tick.set_color(NEUTRAL)
            ax.axhline(n - 1.5, color="#444444", lw=1.0, ls="--")
            ax.axvline(n - 1.5, color="#444444", lw=1.0, ls="--")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("ground-truth class")
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.tick_params(length=0)

        if highlight is not None:
            a, b = highlight
            for name in (a, b):
                if name not in labels:
                    raise DefectFusionError(
                        f"plot_confusion_matrix: highlight class {name!r} is not among the labels {', '.join(labels)}"
                    )
            ia, ib = labels.index(a), labels.index(b)
            for i, j in ((ia, ib), (ib, ia)):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="#D62728", lw=2.8, zorder=5))

        kind = "row-normalised" if normalized else "counts"
        heading = title or f"Detection confusion matrix ({kind})"
        sub = []
        if cm.get("iou_threshold") is not None:
            sub.append(f"IoU ≥ {cm['iou_threshold']}")
        if cm.get("conf_threshold") is not None:
            sub.append(f"confidence ≥ {cm['conf_threshold']}")
        ax.set_title(heading + ("\n" + " · ".join(sub) if sub else ""), fontsize=12)
        notes = []
        if has_bg:
            notes.append("background row: false positives; background column: missed objects")
        if highlight is not None:
            notes.append(f"red outline: {highlight[0]} ↔ {highlight[1]} confusions")
        if normalized and np.isnan(values).all(axis=1).any():
            notes.append(f"{MISSING} = undefined (no ground truth in that row)")
        if notes:
            note(ax, "\n".join(notes))
        return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# PR curves
# ----------------------------------------------------------------------------------------------
def plot_pr_curves(
    metrics: MetricsLike,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """One precision-recall curve (IoU 0.5) per class, with its AP@0.5 in the legend.

    Classes whose curve is undefined (no ground truth in the validation set) are not drawn and
    are named in a note under the plot.
    """
    metrics = check_metrics(metrics)
    curves = metrics.pr_curves
    names = list(class_names) if class_names is not None else metrics.class_names
    index = {name: i for i, name in enumerate(metrics.per_class)}
    with figure(7.6, 6.4) as fig:
        ax = fig.add_subplot()
        # iso-F1 contours: where a curve crosses one, that is the best F1 it reaches there
        r = np.linspace(0.01, 1, 200)
        for f in (0.2, 0.4, 0.6, 0.8):
            with np.errstate(divide="ignore", invalid="ignore"):
                p = f * r / (2 * r - f)
            ok = (p > 0) & (p <= 1.05)
            ax.plot(r[ok], p[ok], color="#DDDDDD", lw=0.8, zorder=0)
            ax.annotate(
                f"F1={f}",
                (r[ok][-1], min(p[ok][-1], 1.0)),
                fontsize=7,
                color="#AAAAAA",
                xytext=(-26, 3),
                textcoords="offset points",
            )
        skipped = []
        for k, name in enumerate(names):
            curve = curves.get(name) if isinstance(curves, Mapping) else None
            ap50 = as_number(metrics.ap50_of(name))
            if not curve or curve.get("precision") is None:
                skipped.append(name)
                continue
            rec = np.asarray([np.nan if v is None else float(v) for v in curve["recall"]], dtype=float)
            prec = np.asarray([np.nan if v is None else float(v) for v in curve["precision"]], dtype=float)
            prec[prec < 0] = np.nan  # COCO writes -1 where a recall level is never reached
            if rec.shape != prec.shape or not np.isfinite(prec).any():
                skipped.append(name)
                continue
            label = f"{name}  (AP@0.5 = {'n/a' if ap50 is None else f'{ap50:.3f}'})"
            ax.plot(rec, prec, color=class_hex(index.get(name, k)), lw=2.0, label=label)
        map50 = as_number(metrics.map50)
        heading = title or "Precision-recall curves per class (IoU 0.5)"
        if map50 is not None:
            heading += f"\nmAP@0.5 = {map50:.3f}"
        ax.set_title(heading)
        ax.set_xlim(0, 1.0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_aspect("equal")
        ax.grid(True, color="#EEEEEE", lw=0.8)
        if len(names) > len(skipped):
            ax.legend(loc="lower left", frameon=True, framealpha=0.9)
        else:
            ax.text(0.5, 0.5, "no class has a defined PR curve", ha="center", va="center", color=NEUTRAL)
        if skipped:
            note(ax, f"not plotted (undefined: no ground truth or no curve): {', '.join(skipped)}")
        return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# AP bars
# ----------------------------------------------------------------------------------------------
def plot_ap_bars(
    before: MetricsLike | Sequence[tuple[str, MetricsLike]],
    after: MetricsLike | None,
    path: str | os.PathLike,
    labels: tuple[str, str] = ("baseline", "fused"),
    metric: str = "ap50",
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Grouped bars of per-class AP, before and after, with the change written above each pair.

    ``before`` may also be a list of ``(label, metrics)`` pairs (then ``after`` must be ``None``)
    to compare any number of models; see :func:`plot_ap_bars_many`.
    """
    one = (Metrics, Mapping)  # one model's metrics, not a list of (label, metrics)
    if after is None:
        if isinstance(before, one):
            return plot_ap_bars_many([(labels[0], before)], path, metric, class_names, title)
        return plot_ap_bars_many(list(before), path, metric, class_names, title)
    if not isinstance(before, one):
        raise DefectFusionError("plot_ap_bars: give either two metrics dicts or one list of (label, metrics)")
    return plot_ap_bars_many([(labels[0], before), (labels[1], after)], path, metric, class_names, title)


def plot_ap_bars_many(
    models: Sequence[tuple[str, MetricsLike]],
    path: str | os.PathLike,
    metric: str = "ap50",
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Grouped bars of per-class AP for several models; deltas are relative to the first model."""
    headers = dict(METRICS)
    if metric not in headers:
        raise DefectFusionError(f"plot_ap_bars: metric must be one of {', '.join(headers)}, got {metric!r}")
    table = compare_many(models, class_names)
    rows = table.rows
    m = len(table.labels)
    width = 0.8 / m
    group_w = max(1.05, 0.45 * m)
    with figure(max(7.0, 1.0 + group_w * len(rows)), 5.4) as fig:
        ax = fig.add_subplot()
        x = np.arange(len(rows), dtype=float)
        undefined = False
        for k in range(m):
            color = MODEL_COLORS[k % len(MODEL_COLORS)]
            offsets = x - 0.4 + width * (k + 0.5)
            for xi, row in zip(offsets, rows, strict=True):
                v = row.values[metric][k]
                if v is None:
                    undefined = True
                    ax.text(xi, 0.01, "n/a", ha="center", va="bottom", rotation=90, fontsize=8, color=NEUTRAL)
                    continue
                ax.bar(xi, v, width * 0.92, color=color, edgecolor="white", lw=0.5)
                inside = v > 0.16
                ax.text(
                    xi,
                    v - 0.015 if inside else v + 0.01,
                    f"{v:.3f}",
                    ha="center",
                    va="top" if inside else "bottom",
                    rotation=90,
                    fontsize=7.5,
                    color="white" if inside and k > 0 else "black",
                )
            if k > 0:
                for xi, row in zip(offsets, rows, strict=True):
                    ref, v = row.values[metric][0], row.values[metric][k]
                    d = delta(ref, v)
                    if d is None:
                        continue
                    top = max(ref, v)
                    color_d = GAIN if round(d, 3) > 0 else LOSS if round(d, 3) < 0 else NEUTRAL
                    ax.text(
                        xi,
                        top + 0.015 + (0.1 if v <= 0.16 else 0),
                        fmt_delta(d),
                        ha="center",
                        va="bottom",
                        fontsize=8.5 if m == 2 else 7.5,
                        color=color_d,
                        fontweight="bold",
                        rotation=0 if m == 2 else 90,
                    )
        names = ["mAP" if r.overall else r.name for r in rows]
        ax.set_xticks(x, names, rotation=25, ha="right", rotation_mode="anchor")
        for tick, row in zip(ax.get_xticklabels(), rows, strict=True):
            if row.overall:
                tick.set_fontweight("bold")
        if rows and rows[-1].overall and len(rows) > 1:
            ax.axvline(len(rows) - 1.5, color="#999999", lw=0.8, ls=":")
        ax.set_ylim(0, 1.12)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_ylabel(headers[metric])
        ax.grid(True, axis="y", color="#EEEEEE")
        ax.set_axisbelow(True)
        handles = [Patch(color=MODEL_COLORS[k % len(MODEL_COLORS)], label=lab) for k, lab in enumerate(table.labels)]
        ncol = min(m, 4)
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=ncol, frameon=False)
        vs = f" ({', '.join(table.labels[1:])} vs {table.labels[0]})" if m > 1 else ""
        ax.set_title(title or f"{headers[metric]} per class{vs}", pad=12 + 20 * math.ceil(m / ncol))
        notes = []
        if m > 1:
            notes.append(f"numbers above the bars: change vs {table.labels[0]}")
        if undefined:
            notes.append("n/a = undefined (class absent from the validation set), not zero")
        if notes:
            note(ax, "\n".join(notes))
        return save_figure(fig, path)
