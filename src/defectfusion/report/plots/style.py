"""Colours, figure style and saving shared by every figure of the report.

Every ``plot_*`` function draws on its own :class:`matplotlib.figure.Figure` (no ``pyplot``, no
global state), writes the PNG atomically and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Annotation

from ...io import atomic_path

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


def class_hex(index: int) -> str:
    return CLASS_COLORS[int(index) % len(CLASS_COLORS)]


@contextmanager
def figure(width: float, height: float, **kwargs: Any) -> Iterator[Figure]:
    with matplotlib.rc_context(_STYLE):
        yield Figure(figsize=(width, height), dpi=DPI, **kwargs)


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return path


def note(ax: Any, text: str) -> None:
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


def grayscale(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` float luminance in ``[0, 1]`` of a uint8 ``[H, W, 3]`` image: the backdrop of map overlays."""
    return (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / 255.0
