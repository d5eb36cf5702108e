"""Figures for the report: confusion matrix, PR curves, AP bars, training curves, boxes on images.

One module per figure family (``metrics``, ``training``, ``detections``) on a shared ``style``.
Every ``plot_*`` function draws on its own figure, writes the PNG atomically and returns its path.
"""

from .detections import GridItem, draw_detections, plot_image_grid
from .metrics import plot_ap_bars, plot_ap_bars_many, plot_confusion_matrix, plot_pr_curves
from .style import CLASS_COLORS, GAIN, LOSS, NEUTRAL, class_color, class_hex, figure, grayscale, note, save_figure
from .training import load_training_records, plot_training_curves

__all__ = [
    "CLASS_COLORS",
    "GAIN",
    "LOSS",
    "NEUTRAL",
    "GridItem",
    "class_color",
    "class_hex",
    "draw_detections",
    "figure",
    "grayscale",
    "load_training_records",
    "note",
    "plot_ap_bars",
    "plot_ap_bars_many",
    "plot_confusion_matrix",
    "plot_image_grid",
    "plot_pr_curves",
    "plot_training_curves",
    "save_figure",
]
