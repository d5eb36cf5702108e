"""Figures for the report: confusion matrix, PR curves, AP bars, training curves, boxes on images.

Every ``plot_*`` function draws on its own :class:`matplotlib.figure.Figure` (no ``pyplot``, no
global state), writes the PNG atomically and returns its path. Undefined metrics (``None`` in
``metrics.json``) are never drawn as 0: they are left out and named in a note on the figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Annotation
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from defectfusion.errors import DefectFusionError
from defectfusion.io import atomic_path, read_jsonl
from defectfusion.report.compare import (
    METRICS,
    MISSING,
    as_number,
    check_metrics,
    compare_many,
    delta,
    fmt_delta,
)

__all__ = [
    "class_color",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "plot_ap_bars",
    "plot_ap_bars_many",
    "load_training_records",
    "plot_training_curves",
    "draw_detections",
    "GridItem",
    "plot_image_grid",
]

#: One fixed colour per class index (Okabe-Ito first: distinguishable with colour blindness).
CLASS_COLORS: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#7F3C8D",  # purple
    "#11A579",  # teal
    "#A5AA99",  # grey-olive
    "#E73F74",  # pink
    "#3969AC",  # dark blue
)
#: Colours of the models in bar charts: the reference model is grey.
MODEL_COLORS: tuple[str, ...] = ("#9E9E9E", "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9")
#: Colours of the training phases.
PHASE_COLORS: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F3C8D")
GAIN, LOSS, NEUTRAL = "#1B7837", "#B2182B", "#555555"
DPI = 150

_STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.facecolor": "white",
    "text.parse_math": False,  # class names are user text: a "$" must not start math mode
}


def class_color(index: int) -> tuple[int, int, int]:
    """The fixed RGB colour of class ``index`` (the same in every figure and drawn image)."""
    hexcode = CLASS_COLORS[int(index) % len(CLASS_COLORS)]
    return tuple(int(hexcode[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _hex(index: int) -> str:
    return CLASS_COLORS[int(index) % len(CLASS_COLORS)]


@contextmanager
def _figure(width: float, height: float, **kwargs: Any) -> Iterator[Figure]:
    with matplotlib.rc_context(_STYLE):
        yield Figure(figsize=(width, height), dpi=DPI, **kwargs)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return path


def _note(ax: Any, text: str) -> None:
    """A small italic note under everything the axes draw (tick labels and axis label included)."""
    note = Annotation(
        text,
        xy=(0, 0),
        xycoords=lambda renderer: ax.get_tightbbox(renderer),
        xytext=(0, -6),
        textcoords="offset points",
        ha="left",
        va="top",
        fontsize=8.5,
        color=NEUTRAL,
        style="italic",
    )
    ax.figure.add_artist(note)


# ----------------------------------------------------------------------------------------------
# confusion matrix
# ----------------------------------------------------------------------------------------------
def _confusion(cm: Mapping[str, Any]) -> Mapping[str, Any]:
    if "confusion_matrix" in cm:
        cm = cm["confusion_matrix"]
    if not isinstance(cm, Mapping) or "labels" not in cm or "counts" not in cm:
        raise DefectFusionError(
            "plot_confusion_matrix: expected the evaluator's 'confusion_matrix' dict with 'labels' and "
            "'counts' (or a metrics dict holding one)"
        )
    n = len(cm["labels"])
    counts = cm["counts"]
    if len(counts) != n or any(len(r) != n for r in counts):
        raise DefectFusionError(
            f"confusion_matrix: 'counts' must be {n} x {n} (one row and column per label), "
            f"got {len(counts)} rows"
        )
    return cm


def _row_normalized(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = counts / totals
    out[totals[:, 0] == 0] = np.nan
    return out


def plot_confusion_matrix(
    cm: Mapping[str, Any],
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
    with _figure(side + 1.2, side) as fig:
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#EEEEEE")
        if normalized:
            norm: Normalize = Normalize(0.0, 1.0)
        else:
            norm = PowerNorm(
                gamma=0.5, vmin=0.0, vmax=max(1.0, float(np.nanmax(counts)) if counts.size else 1.0)
            )
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
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=fontsize, color=color, fontweight=weight
                )

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
                        f"plot_confusion_matrix: highlight class {name!r} is not among the labels "
                        f"{', '.join(labels)}"
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
            _note(ax, "\n".join(notes))
        return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# PR curves
# ----------------------------------------------------------------------------------------------
def _class_names(metrics: Mapping[str, Any], class_names: Sequence[str] | None) -> list[str]:
    return list(class_names) if class_names is not None else list(metrics["per_class"])


def plot_pr_curves(
    metrics: Mapping[str, Any],
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """One precision-recall curve (IoU 0.5) per class, with its AP@0.5 in the legend.

    Classes whose curve is undefined (no ground truth in the validation set) are not drawn and
    are named in a note under the plot.
    """
    check_metrics(metrics)
    curves = metrics.get("pr_curves") or {}
    names = _class_names(metrics, class_names)
    index = {name: i for i, name in enumerate(metrics["per_class"])}
    with _figure(7.6, 6.4) as fig:
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
            ap50 = as_number((metrics["per_class"].get(name) or {}).get("ap50"))
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
            ax.plot(rec, prec, color=_hex(index.get(name, k)), lw=2.0, label=label)
        map50 = as_number(metrics.get("map50"))
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
            _note(ax, f"not plotted (undefined: no ground truth or no curve): {', '.join(skipped)}")
        return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# AP bars
# ----------------------------------------------------------------------------------------------
def plot_ap_bars(
    before: Mapping[str, Any] | Sequence[tuple[str, Mapping[str, Any]]],
    after: Mapping[str, Any] | None,
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
    if after is None:
        if isinstance(before, Mapping):
            return plot_ap_bars_many([(labels[0], before)], path, metric, class_names, title)
        return plot_ap_bars_many(list(before), path, metric, class_names, title)
    if not isinstance(before, Mapping):
        raise DefectFusionError("plot_ap_bars: give either two metrics dicts or one list of (label, metrics)")
    return plot_ap_bars_many([(labels[0], before), (labels[1], after)], path, metric, class_names, title)


def plot_ap_bars_many(
    models: Sequence[tuple[str, Mapping[str, Any]]],
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
    with _figure(max(7.0, 1.0 + group_w * len(rows)), 5.4) as fig:
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
        handles = [
            Patch(color=MODEL_COLORS[k % len(MODEL_COLORS)], label=lab) for k, lab in enumerate(table.labels)
        ]
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
            _note(ax, "\n".join(notes))
        return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# training curves
# ----------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = read_jsonl(path, "training log")
    for record in records:
        record.setdefault("phase", path.parent.name)
    return records


def load_training_records(source: Any) -> list[dict[str, Any]]:
    """Training records from a run folder, ``metrics.jsonl`` files, or already-loaded dicts.

    ``source`` may be a folder (its ``metrics.jsonl`` and ``*/metrics.jsonl``), a file, a list of
    those, or a list of dicts. Files are ordered by their first record's ``time`` (then path), so
    the phases come in the order they ran. A record without ``phase`` takes its folder's name.
    """
    if isinstance(source, Mapping):
        return [dict(source)]
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    records: list[dict[str, Any]] = []
    files: list[Path] = []
    for item in source:
        if isinstance(item, Mapping):
            records.append(dict(item))
            continue
        p = Path(item)
        if p.is_dir():
            found = sorted({*p.glob("metrics.jsonl"), *p.glob("*/metrics.jsonl")})
            if not found:
                raise DefectFusionError(f"{p}: no metrics.jsonl in this folder or its phase folders")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DefectFusionError(f"{p}: no such training log (expected a run folder or a metrics.jsonl)")
    loaded = [(f, _read_jsonl(f)) for f in files]
    loaded.sort(key=lambda fr: (str(fr[1][0].get("time", "")) if fr[1] else "", str(fr[0])))
    for _, recs in loaded:
        records.extend(recs)
    return records


def plot_training_curves(
    records: Any,
    path: str | os.PathLike,
    baseline: float | None = None,
    title: str | None = None,
) -> Path:
    """Validation mAP@0.5 (and mAP@0.5:0.95) and training loss per epoch, coloured by phase.

    Epochs restart in each phase; the x axis counts them cumulatively, with a dotted line where a
    phase begins. Records of phase ``"baseline"`` are not drawn as a curve: their best mAP@0.5 is
    the horizontal baseline (unless ``baseline`` is given).
    """
    records = load_training_records(records)
    phases: dict[str, list[dict[str, Any]]] = {}
    base_values = []
    for rec in records:
        phase = str(rec.get("phase") or "run")
        if phase == "baseline":
            v = as_number(rec.get("map50"))
            if v is not None:
                base_values.append(v)
            continue
        phases.setdefault(phase, []).append(rec)
    if baseline is None and base_values:
        baseline = max(base_values)
    if not phases:
        raise DefectFusionError("plot_training_curves: no training records (besides the baseline) to plot")

    # cumulative x: a phase whose epochs restart continues where the previous one ended
    series = []
    end = 0.0
    for phase, recs in phases.items():
        epochs = [r.get("epoch") if isinstance(r.get("epoch"), (int, float)) else None for r in recs]
        if any(e is None for e in epochs):
            epochs = list(range(1, len(recs) + 1))
        start = min(epochs)
        # epochs that restart (1.. or 0..) continue right after the previous phase's last epoch
        offset = end + 1 - start if series and start <= end else 0.0
        xs = np.asarray(epochs, dtype=float) + offset
        order = np.argsort(xs, kind="stable")
        recs = [recs[i] for i in order]
        xs = xs[order]

        def column(key: str, recs: list[dict[str, Any]] = recs) -> np.ndarray:
            return np.asarray(
                [np.nan if as_number(r.get(key)) is None else as_number(r.get(key)) for r in recs]
            )

        lr = next((as_number(r.get("lr")) for r in recs if as_number(r.get("lr")) is not None), None)
        boundary = (end + xs.min()) / 2 if series else None
        series.append((phase, xs, column("map50"), column("map"), column("train_loss"), lr, boundary))
        end = float(xs.max())

    has_map = any(np.isfinite(s[3]).any() for s in series)
    has_loss = any(np.isfinite(s[4]).any() for s in series)
    panels = ["map50"] + (["map"] if has_map else []) + (["loss"] if has_loss else [])
    ratios = {"map50": 3.0, "map": 1.8, "loss": 1.8}
    height = 1.4 + sum(1.2 * ratios[p] for p in panels)
    with _figure(9.0, height) as fig:
        axes = fig.subplots(
            len(panels),
            1,
            sharex=True,
            squeeze=False,
            gridspec_kw={"height_ratios": [ratios[p] for p in panels], "hspace": 0.1},
        )[:, 0]
        ax = dict(zip(panels, axes, strict=True))
        top = ax["map50"]
        seen: dict[str, list[float]] = {"map50": [], "map": []}
        for k, (phase, xs, map50, mapall, loss, lr, boundary) in enumerate(series):
            color = PHASE_COLORS[k % len(PHASE_COLORS)]
            label = phase + (f" (lr {lr:.0e})" if lr is not None else "")
            ok = np.isfinite(map50)
            if ok.any():
                top.plot(xs[ok], map50[ok], "-o", color=color, ms=3.5, lw=1.8, label=label)
                best = int(np.nanargmax(map50))
                top.plot(
                    xs[best], map50[best], marker="*", ms=14, color=color, mec="black", mew=0.6, zorder=5
                )
                top.annotate(
                    f"{map50[best]:.3f}",
                    (xs[best], map50[best]),
                    xytext=(0, 9),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8.5,
                    color=color,
                    fontweight="bold",
                )
                seen["map50"].extend(map50[ok])
            else:
                top.plot([], [], "-o", color=color, label=label + ", no mAP logged")
            if "map" in ax and np.isfinite(mapall).any():
                ok_all = np.isfinite(mapall)
                ax["map"].plot(xs[ok_all], mapall[ok_all], "-o", color=color, ms=2.5, lw=1.4)
                seen["map"].extend(mapall[ok_all])
            if "loss" in ax and np.isfinite(loss).any():
                ok_l = np.isfinite(loss)
                ax["loss"].plot(xs[ok_l], loss[ok_l], "-o", color=color, lw=1.6, ms=2.5)  # one point shows too
            if boundary is not None:
                for a in axes:
                    a.axvline(boundary, color="#777777", lw=1.0, ls=":")
        if baseline is not None:
            top.axhline(
                baseline, color="#444444", lw=1.3, ls="-.", label=f"baseline mAP@0.5 = {baseline:.3f}"
            )
            seen["map50"].append(baseline)
        for k, (phase, xs, *_rest) in enumerate(series):
            top.text(
                (xs.min() + xs.max()) / 2,
                1.01,
                phase,
                transform=top.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=9.5,
                color=PHASE_COLORS[k % len(PHASE_COLORS)],
                fontweight="bold",
            )
        for key, a in ax.items():
            if key in seen and seen[key]:
                lo, hi = float(np.min(seen[key])), float(np.max(seen[key]))
                pad = max(0.01, 0.15 * (hi - lo))
                a.set_ylim(lo - pad, hi + 2 * pad)
            a.grid(True, color="#EEEEEE")
        if not seen["map50"]:
            top.text(
                0.5, 0.5, "no validation mAP logged", transform=top.transAxes, ha="center", color=NEUTRAL
            )
        top.set_ylabel("val mAP@0.5")
        if "map" in ax:
            ax["map"].set_ylabel("val mAP@0.5:0.95")
        if "loss" in ax:
            ax["loss"].set_ylabel("training loss")
        axes[-1].set_xlabel("epoch (counted across phases)")
        handles, labels_ = top.get_legend_handles_labels()
        handles.append(Line2D([], [], color="#555555", marker="*", ls="", ms=11, mec="black", mew=0.6))
        labels_.append("best mAP@0.5 of the phase")
        if len(series) > 1:
            handles.append(Line2D([], [], color="#777777", ls=":", lw=1.0))
            labels_.append("phase boundary")
        fig.legend(
            handles,
            labels_,
            loc="upper center",
            ncol=3,
            frameon=False,
            fontsize=9,
            bbox_to_anchor=(0.5, fig.subplotpars.bottom - 0.5 / height),
        )
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        default = "Training progress per phase: validation mAP" + (" and training loss" if has_loss else "")
        top.set_title(title or default, pad=22)
        return _save(fig, path)


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
        raise DefectFusionError(
            f"draw_detections: image must have shape [H, W, 3] or [H, W], got {list(array.shape)}"
        )
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


def _dashed_rect(
    draw: ImageDraw.ImageDraw, box: Sequence[float], color: tuple[int, int, int], width: int
) -> None:
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
        canvas = canvas.resize(
            (max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale))), resample
        )
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
    title_h, head_h, foot_h = 0.32, 0.55, 0.45
    height = rows * (cell_h + title_h) + head_h + foot_h
    with _figure(cols * cell_w, height) as fig:
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
            it = items[k]
            caption = it.title or f"image {k + 1}"
            counts = []
            if it.detections is not None:
                b, _, s = _boxes(it.detections)
                shown = len(b) if s is None else int(np.sum(s >= score_threshold))
                counts.append(f"{shown} pred" + (f" (top {max_detections} drawn)" if shown > max_detections else ""))
            if it.gt is not None:
                counts.append(f"{len(_boxes(it.gt)[0])} GT")
            if counts:
                caption += "  ·  " + " / ".join(counts)
            ax.set_title(caption, fontsize=9)
        used = sorted(
            {
                int(x)
                for it in items
                for obj in (it.detections, it.gt)
                if obj is not None
                for x in _boxes(obj)[1]
            }
        )
        handles = [
            Patch(color=_hex(i), label=class_names[i] if i < len(class_names) else f"class {i}") for i in used
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
        return _save(fig, path)
