"""The standard evaluation report: metrics, comparison with the baseline, confusion pair, plots.

:func:`build_report` draws the figures and writes ``report.md`` + ``report.html`` through
:mod:`.markdown`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DefectFusionError
from ..structures import Metrics
from . import plots
from .compare import compare_many, compare_metrics, confusion_pair, pair_sentences, pair_table, per_class_rows
from .markdown import Section, write_report
from .values import MetricsLike, as_number, check_metrics, fmt_delta, fmt_value

__all__ = ["Section", "build_report", "write_report"]


# ----------------------------------------------------------------------------------------------
# the standard evaluation report
# ----------------------------------------------------------------------------------------------
def _pair_for(metrics: Metrics, pair: Sequence[str] | None | bool) -> tuple[str, str] | None:
    """The pair to call out, when both of its classes are in the metrics (``None``/``False``: none)."""
    labels = metrics.confusion_matrix.get("labels") or []
    if not pair or pair is True or not all(n in labels for n in pair):
        return None
    return (pair[0], pair[1])


def build_report(
    out_dir: str | os.PathLike,
    metrics: MetricsLike,
    *,
    baseline: MetricsLike | None = None,
    labels: tuple[str, str] = ("baseline", "fused"),
    pair: Sequence[str] | None | bool = None,
    training: Any = None,
    images: Sequence[Any] | None = None,
    class_names: Sequence[str] | None = None,
    what_if: Sequence[tuple[str, MetricsLike]] | None = None,
    title: str = "Evaluation report",
    split: str = "validation",
    extra_sections: Sequence[Section] = (),
    intro_sections: Sequence[Section] = (),
) -> tuple[Path, Path]:
    """Plots and tables of one evaluation (optionally against a baseline) -> ``report.md`` + ``.html``.

    Args:
        out_dir: the report folder; figures go to ``out_dir/plots``.
        metrics: the evaluated model's metrics (or its ``metrics.json`` dict).
        baseline: the baseline's metrics on the same data: adds the before/after/delta table,
            AP bars and the confusion-pair counts.
        labels: names of the baseline and the evaluated model in tables and plots.
        pair: the confusable pair to call out (e.g. a descriptions file's ``confusable_pair``);
            ``None`` or ``False`` for none.
        training: a run folder, ``metrics.jsonl`` paths or records for the training curves.
        images: items for :func:`plots.plot_image_grid` (validation images with boxes).
        class_names: contiguous class names (for the image grid and row order).
        what_if: ``(label, metrics)`` of the same model with other description files.
        split: what the images evaluated are called in titles (``test``, ``val``, ...).
        extra_sections: appended at the end.
        intro_sections: inserted right after the summary (e.g. a training run's phases and gates).
    """
    metrics = check_metrics(metrics)
    baseline = None if baseline is None else check_metrics(baseline, "baseline metrics")
    out = Path(out_dir)
    plot_dir = out / "plots"
    names = list(class_names) if class_names is not None else metrics.class_names
    pair_names = _pair_for(metrics, pair)
    sections: list[Section] = []

    # headline
    lines = []
    map50, map_all = as_number(metrics.map50), as_number(metrics.map)
    if baseline is not None:
        b50 = as_number(baseline.map50)
        d = fmt_delta(None if b50 is None or map50 is None else map50 - b50)
        lines.append(f"- **mAP@0.5**: {fmt_value(map50)} ({labels[0]}: {fmt_value(b50)}, change {d})")
        lines.append(f"- **mAP@0.5:0.95**: {fmt_value(map_all)} ({labels[0]}: {fmt_value(baseline.map)})")
    else:
        lines.append(f"- **mAP@0.5**: {fmt_value(map50)}")
        lines.append(f"- **mAP@0.5:0.95**: {fmt_value(map_all)}")
    counts = [
        f"{n} {w}"
        for n, w in (
            (metrics.num_images, "images"),
            (metrics.num_ground_truth, "ground-truth boxes"),
            (metrics.num_detections, "detections"),
        )
        if isinstance(n, int)
    ]
    if counts:
        lines.append("- evaluated on " + ", ".join(counts))
    if pair_names is not None:
        pair_lines = (
            pair_sentences(baseline, metrics, *pair_names)
            if baseline is not None
            else pair_sentences(metrics, None, *pair_names)
        )
        lines += [f"- {line}" for line in pair_lines]
    undefined = [n for n in names if as_number(metrics.ap50_of(n)) is None]
    if undefined:
        lines.append(f"- undefined (no ground truth in this data, shown as –): {', '.join(undefined)}")
    sections.append(Section("Summary", "\n".join(lines)))
    sections.extend(intro_sections)

    sections.append(
        Section(
            "Per-class metrics",
            "AP from COCO evaluation; precision, recall and F1 at the confidence (`conf`) that maximises F1.",
            table=per_class_rows(metrics, names),
        )
    )

    if baseline is not None:
        table = compare_metrics(baseline, metrics, names, labels=labels)
        bars = plots.plot_ap_bars(baseline, metrics, plot_dir / "ap_bars.png", labels=labels, class_names=names)
        text = f"Per class: {labels[0]} (before), {labels[1]} (after) and the change. Same data for both."
        sections.append(
            Section(
                f"Comparison with the {labels[0]}",
                text,
                table=table.to_display_rows(),
                images=[(bars, f"AP@0.5 per class, {labels[1]} vs {labels[0]}")],
            )
        )
        if pair_names is not None:
            cp = confusion_pair(baseline, metrics, *pair_names)
            said = "\n\n".join(pair_sentences(baseline, metrics, *pair_names))
            sections.append(
                Section(
                    f"Confusion pair: {pair_names[0]} / {pair_names[1]}",
                    f"{said}\n\nCounts of ground-truth boxes matched (IoU ≥ threshold) by a prediction of the other "
                    "class.",
                    table=cp.to_rows(labels),
                    level=3,
                )
            )

    cm_images = [
        (
            plots.plot_confusion_matrix(
                metrics, plot_dir / "confusion_matrix.png", normalized=False, highlight=pair_names
            ),
            "Confusion matrix, counts",
        ),
        (
            plots.plot_confusion_matrix(
                metrics, plot_dir / "confusion_matrix_normalized.png", normalized=True, highlight=pair_names
            ),
            "Confusion matrix, row-normalised",
        ),
    ]
    if baseline is not None:
        cm_images.append(
            (
                plots.plot_confusion_matrix(
                    baseline,
                    plot_dir / "confusion_matrix_normalized_baseline.png",
                    normalized=True,
                    highlight=pair_names,
                    title=f"Confusion matrix of the {labels[0]} (row-normalised)",
                ),
                f"{labels[0]}, row-normalised",
            )
        )
    sections.append(
        Section(
            "Confusion matrix",
            "Rows are ground truth, columns are predictions. The background row counts false positives, "
            "the background column missed objects.",
            images=cm_images,
        )
    )
    if metrics.pr_curves:
        sections.append(
            Section(
                "Precision-recall curves",
                images=[
                    (
                        plots.plot_pr_curves(metrics, plot_dir / "pr_curves.png", names),
                        "Precision-recall per class at IoU 0.5",
                    )
                ],
            )
        )

    if training is not None:
        try:
            base_line = as_number(baseline.map50) if baseline is not None else None
            curve = plots.plot_training_curves(training, plot_dir / "training_curves.png", baseline=base_line)
            sections.append(Section("Training curves", images=[(curve, "Validation mAP and training loss per epoch")]))
        except DefectFusionError as exc:
            sections.append(Section("Training curves", f"Not drawn: {exc}"))

    if what_if:
        models = [(label, check_metrics(m, f"what-if metrics of {label!r}")) for label, m in what_if]
        table = compare_many(models, names)
        bars = plots.plot_ap_bars_many(
            models,
            plot_dir / "what_if_ap_bars.png",
            class_names=names,
            title="AP@0.5 per class for each description set",
        )
        text = (
            f"The same detector with the class text embeddings of each description file; deltas are "
            f"relative to {models[0][0]}."
        )
        sections.append(
            Section(
                "What-if descriptions",
                text,
                table=table.to_display_rows(("ap50",)),
                images=[(bars, "AP@0.5 per description set")],
            )
        )
        wp = _pair_for(models[0][1], pair)
        if wp is not None:
            sections.append(
                Section(f"Which wording separates {wp[0]} / {wp[1]}", table=pair_table(models, *wp), level=3)
            )

    if images:
        heading = f"Predictions on the {split} images"
        grid = plots.plot_image_grid(images, plot_dir / "predictions.png", names, title=f"{heading} and ground truth")
        sections.append(
            Section(
                heading,
                images=[(grid, "Solid boxes: predictions with scores; dashed: ground truth")],
            )
        )

    sections.extend(extra_sections)
    return write_report(out, title, sections)
