"""Figures of a study: a forest plot of differences with intervals, a learning curve over training fractions."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .style import GAIN, LOSS, MODEL_COLORS, NEUTRAL, figure, save_figure


def plot_forest(
    intervals: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str,
    xlabel: str = "difference of test mAP@0.5",
) -> Path:
    """One row per difference ``a − b``: the observed value and its 95% interval, zero marked.

    An interval entirely above zero is drawn green, entirely below red, across zero grey.
    """
    rows = [iv for iv in intervals if all(math.isfinite(iv[k]) for k in ("difference", "low", "high"))]
    with figure(7.5, 0.9 + 0.42 * max(1, len(rows))) as fig:
        ax = fig.add_subplot(1, 1, 1)
        for y, iv in enumerate(reversed(rows)):
            colour = GAIN if iv["low"] > 0 else LOSS if iv["high"] < 0 else NEUTRAL
            ax.plot([iv["low"], iv["high"]], [y, y], color=colour, lw=2.4, solid_capstyle="butt")
            ax.plot([iv["difference"]], [y], "o", color=colour, ms=6)
            ax.text(
                iv["high"],
                y,
                f"  {iv['difference']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]",
                va="center",
                fontsize=8,
                color=colour,
            )
        ax.axvline(0, color="#999999", lw=1, ls="--")
        ax.set_yticks(range(len(rows)), [f"{iv['a']} − {iv['b']}" for iv in reversed(rows)])
        lo = min([iv["low"] for iv in rows] + [0.0])
        hi = max([iv["high"] for iv in rows] + [0.0])
        pad = 0.35 * (hi - lo or 0.01)
        ax.set_xlim(lo - 0.1 * pad, hi + pad)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=11)
        ax.grid(True, axis="x", color="#EEEEEE")
        return save_figure(fig, path)


def plot_learning_curve(
    points: Mapping[str, Sequence[tuple[float, float | None, float | None]]],
    path: str | os.PathLike,
    title: str = "Test mAP@0.5 vs training fraction",
    split: str = "test",
) -> Path:
    """One line per arm over training fractions: the mean over seeds, a band of ± one sd."""
    with figure(6.8, 4.2) as fig:
        ax = fig.add_subplot(1, 1, 1)
        for k, (arm, values) in enumerate(points.items()):
            pts = sorted((f, m, s) for f, m, s in values if m is not None)
            if not pts:
                continue
            x = np.array([p[0] * 100 for p in pts])
            mean = np.array([p[1] for p in pts])
            sd = np.array([p[2] or 0.0 for p in pts])
            colour = MODEL_COLORS[k % len(MODEL_COLORS)]
            ax.plot(x, mean, "o-", color=colour, label=arm, lw=1.8)
            ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.15, lw=0)
        ax.set_xlabel("training images used (%)")
        ax.set_ylabel(f"{split} mAP@0.5 (mean ± sd over seeds)")
        ax.set_title(title, fontsize=11)
        ax.grid(True, color="#EEEEEE")
        ax.legend(fontsize=8)
        return save_figure(fig, path)
