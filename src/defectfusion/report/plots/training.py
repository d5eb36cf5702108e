"""Training curves from a run folder's ``metrics.jsonl`` files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ...errors import DefectFusionError
from ...io import read_jsonl
from ..values import as_number
from .style import (
    NEUTRAL,
    PHASE_COLORS,
    figure,
    save_figure,
)

TOP, ALL = "mAP@0.5", "mAP@0.5:0.95"  # the panels of the training curves (axes, not record fields)


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
            return np.asarray([np.nan if as_number(r.get(key)) is None else as_number(r.get(key)) for r in recs])

        # the phase's configured lr (records before base_lr existed: the first logged, already decayed)
        lr = next((as_number(r.get("base_lr")) for r in recs if as_number(r.get("base_lr")) is not None), None)
        if lr is None:
            lr = next((as_number(r.get("lr")) for r in recs if as_number(r.get("lr")) is not None), None)
        boundary = (end + xs.min()) / 2 if series else None
        series.append((phase, xs, column("map50"), column("map"), column("train_loss"), lr, boundary))
        end = float(xs.max())

    has_map = any(np.isfinite(s[3]).any() for s in series)
    has_loss = any(np.isfinite(s[4]).any() for s in series)
    panels = [TOP] + ([ALL] if has_map else []) + (["loss"] if has_loss else [])
    ratios = {TOP: 3.0, ALL: 1.8, "loss": 1.8}
    height = 1.4 + sum(1.2 * ratios[p] for p in panels)
    with figure(9.0, height) as fig:
        axes = fig.subplots(
            len(panels),
            1,
            sharex=True,
            squeeze=False,
            gridspec_kw={"height_ratios": [ratios[p] for p in panels], "hspace": 0.1},
        )[:, 0]
        ax = dict(zip(panels, axes, strict=True))
        top = ax[TOP]
        seen: dict[str, list[float]] = {TOP: [], ALL: []}
        for k, (phase, xs, map50, mapall, loss, lr, boundary) in enumerate(series):
            color = PHASE_COLORS[k % len(PHASE_COLORS)]
            label = phase + (f" (lr {lr:.0e})" if lr is not None else "")
            ok = np.isfinite(map50)
            if ok.any():
                top.plot(xs[ok], map50[ok], "-o", color=color, ms=3.5, lw=1.8, label=label)
                best = int(np.nanargmax(map50))
                top.plot(xs[best], map50[best], marker="*", ms=14, color=color, mec="black", mew=0.6, zorder=5)
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
                seen[TOP].extend(map50[ok])
            else:
                top.plot([], [], "-o", color=color, label=label + ", no mAP logged")
            if ALL in ax and np.isfinite(mapall).any():
                ok_all = np.isfinite(mapall)
                ax[ALL].plot(xs[ok_all], mapall[ok_all], "-o", color=color, ms=2.5, lw=1.4)
                seen[ALL].extend(mapall[ok_all])
            if "loss" in ax and np.isfinite(loss).any():
                ok_l = np.isfinite(loss)
                ax["loss"].plot(xs[ok_l], loss[ok_l], "-o", color=color, lw=1.6, ms=2.5)  # one point shows too
            if boundary is not None:
                for a in axes:
                    a.axvline(boundary, color="#777777", lw=1.0, ls=":")
        if baseline is not None:
            top.axhline(baseline, color="#444444", lw=1.3, ls="-.", label=f"baseline mAP@0.5 = {baseline:.3f}")
            seen[TOP].append(baseline)
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
        if not seen[TOP]:
            top.text(0.5, 0.5, "no validation mAP logged", transform=top.transAxes, ha="center", color=NEUTRAL)
        top.set_ylabel("val mAP@0.5")
        if ALL in ax:
            ax[ALL].set_ylabel("val mAP@0.5:0.95")
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
        return save_figure(fig, path)
