"""Side-by-side comparison of evaluation results (pure functions on the evaluator's metrics).

Each function takes :class:`~defectfusion.structures.Metrics` (or its ``metrics.json`` dict,
checked and read by :func:`.values.check_metrics`).

``None`` means *undefined* (e.g. a class absent from the validation set). It is carried through
every comparison: a delta involving an undefined value is undefined too, never 0.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DefectFusionError
from ..structures import ClassMetrics, Metrics
from .values import (
    METRICS,
    MISSING,
    OVERALL,
    MetricsLike,
    as_number,
    check_metrics,
    confusion_matrix,
    delta,
    fmt_delta,
    fmt_value,
    markdown_table,
)


def _class_entry(metrics: Metrics, name: str) -> ClassMetrics:
    return metrics.per_class.get(name) or ClassMetrics()  # a class missing here: all undefined


def _union_names(models: Sequence[Metrics]) -> list[str]:
    names: list[str] = []
    for metrics in models:
        for name in metrics.per_class:
            if name not in names:
                names.append(name)
    return names


def _unknown(kind: str, name: str, valid: Sequence[str], source: str) -> DefectFusionError:
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return DefectFusionError(f"{source}: unknown {kind} {name!r}; valid: {', '.join(valid)}.{hint}")


# ----------------------------------------------------------------------------------------------
# per-class comparison
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComparisonRow:
    """One row of a comparison: a class (or the dataset-wide mAP) across several models.

    Attributes:
        name: class name, or :data:`OVERALL` for the mAP row.
        overall: True for the dataset-wide row.
        values: ``{"ap50": (v_model0, v_model1, ...), "ap": (...)}``; ``None`` = undefined.
        num_gt: ground-truth instances of the class per model (``None`` when not reported).
    """

    name: str
    overall: bool
    values: Mapping[str, tuple[float | None, ...]]
    num_gt: tuple[int | None, ...]

    def deltas(self, metric: str = "ap50") -> tuple[float | None, ...]:
        """``value(model_i) - value(model_0)`` for every model after the first."""
        vals = self.values[metric]
        return tuple(delta(vals[0], v) for v in vals[1:])


@dataclass(frozen=True)
class ComparisonTable:
    """Per-class AP of several models, the first one being the reference (the baseline).

    Built by :func:`compare_metrics` (two models: before / after) or :func:`compare_many`.
    """

    labels: tuple[str, ...]
    rows: tuple[ComparisonRow, ...]

    @property
    def class_rows(self) -> tuple[ComparisonRow, ...]:
        return tuple(r for r in self.rows if not r.overall)

    def row(self, name: str) -> ComparisonRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise _unknown("class", name, [r.name for r in self.rows], "comparison table")

    def to_rows(self) -> list[dict[str, Any]]:
        """Raw rows for JSON: ``{"class", "overall", "ap50_<label>", "ap50_delta_<label>", ...}``.

        Values are floats or ``None`` (undefined); deltas are relative to the first model and
        exist for every other model. With :func:`compare_metrics`' default labels the keys are
        ``ap50_before``, ``ap50_after``, ``ap50_delta_after`` (and the same for ``ap``).
        """
        out = []
        for r in self.rows:
            row: dict[str, Any] = {"class": r.name, "overall": r.overall}
            for metric, _ in METRICS:
                for label, value in zip(self.labels, r.values[metric], strict=True):
                    row[f"{metric}_{label}"] = value
                for label, d in zip(self.labels[1:], r.deltas(metric), strict=True):
                    row[f"{metric}_delta_{label}"] = d
            row["num_gt"] = next((n for n in r.num_gt if n is not None), None)
            out.append(row)
        return out

    def to_display_rows(self, metrics: Sequence[str] = ("ap50", "ap")) -> list[dict[str, str]]:
        """Rows of strings with human headers, ready for a report table (``–`` = undefined)."""
        headers = dict(METRICS)
        out = []
        for r in self.rows:
            row = {"class": f"**{r.name}**" if r.overall else r.name}
            n = next((n for n in r.num_gt if n is not None), None)
            row["GT"] = "" if r.overall else (MISSING if n is None else str(n))
            for metric in metrics:
                for label, value in zip(self.labels, r.values[metric], strict=True):
                    row[f"{headers[metric]} {label}"] = fmt_value(value)
                for label, d in zip(self.labels[1:], r.deltas(metric), strict=True):
                    key = f"Δ {headers[metric]}" if len(self.labels) == 2 else f"Δ {headers[metric]} {label}"
                    row[key] = fmt_delta(d)
            out.append(row)
        return out

    def to_markdown(self, metrics: Sequence[str] = ("ap50", "ap")) -> str:
        """A GitHub-flavoured markdown table (``–`` = undefined, deltas signed)."""
        return markdown_table(self.to_display_rows(metrics))


def compare_metrics(
    before: MetricsLike,
    after: MetricsLike,
    class_names: Sequence[str] | None = None,
    labels: tuple[str, str] = ("before", "after"),
) -> ComparisonTable:
    """Compare two evaluations class by class: before, after and ``after - before``.

    Args:
        before: the reference metrics (the baseline checkpoint).
        after: the metrics to compare (the fused model).
        class_names: rows in this order; default: the classes of ``before`` then any new ones
            of ``after``. A class missing from one side has undefined (``None``) values there.
        labels: the two column labels.
    """
    return compare_many([(labels[0], before), (labels[1], after)], class_names)


def compare_many(
    models: Sequence[tuple[str, MetricsLike]], class_names: Sequence[str] | None = None
) -> ComparisonTable:
    """Compare any number of evaluations (e.g. one per description file); the first is the reference."""
    if not models:
        raise DefectFusionError("compare_many: expected at least one (label, metrics) pair, got none")
    labels = tuple(str(label) for label, _ in models)
    if len(set(labels)) != len(labels):
        raise DefectFusionError(f"compare_many: model labels must be unique, got {list(labels)}")
    checked = [check_metrics(metrics, source=f"metrics of {label!r}") for label, metrics in models]
    names = list(class_names) if class_names is not None else _union_names(checked)
    rows = []
    for name in names:
        entries = [_class_entry(m, name) for m in checked]
        values = {metric: tuple(as_number(getattr(e, metric)) for e in entries) for metric, _ in METRICS}
        num_gt = tuple(e.num_gt if isinstance(e.num_gt, int) else None for e in entries)
        rows.append(ComparisonRow(name, False, values, num_gt))
    overall = {
        "ap50": tuple(as_number(m.map50) for m in checked),
        "ap": tuple(as_number(m.map) for m in checked),
    }
    rows.append(ComparisonRow(OVERALL, True, overall, tuple(None for _ in checked)))
    return ComparisonTable(labels, tuple(rows))


# ----------------------------------------------------------------------------------------------
# the confusable pair
# ----------------------------------------------------------------------------------------------
def pair_counts(metrics: MetricsLike, a: str, b: str) -> tuple[int, int]:
    """``(GT a predicted as b, GT b predicted as a)`` from the confusion matrix's raw counts.

    Rows of ``confusion_matrix.counts`` are ground truth, columns are predictions.
    """
    cm = confusion_matrix(metrics)
    labels = list(cm["labels"])
    counts = cm["counts"]
    for name in (a, b):
        if name not in labels:
            raise _unknown("class", name, labels, "confusion matrix")
    ia, ib = labels.index(a), labels.index(b)
    return int(counts[ia][ib]), int(counts[ib][ia])


@dataclass(frozen=True)
class ConfusionPair:
    """How often two classes were mistaken for each other, before and after.

    ``a_as_b`` counts ground-truth ``a`` boxes matched (IoU >= threshold) by a prediction of ``b``.
    ``after`` values are ``None`` when only one evaluation was given.
    """

    a: str
    b: str
    a_as_b_before: int
    b_as_a_before: int
    a_as_b_after: int | None = None
    b_as_a_after: int | None = None

    @staticmethod
    def _line(x: str, y: str, before: int, after: int | None) -> str:
        if after is None:
            return f"{x} called {y}: {before}"
        d = after - before
        return f"{x} called {y}: {before} -> {after} ({'+' if d > 0 else ''}{d})"

    def sentence(self) -> str:
        """``"ROTURA_FRACTURA called RAYONES_ARANAZOS: 12 -> 7 (-5)"``."""
        return self._line(self.a, self.b, self.a_as_b_before, self.a_as_b_after)

    def reverse_sentence(self) -> str:
        """The other direction: ``"RAYONES_ARANAZOS called ROTURA_FRACTURA: 3 -> 4 (+1)"``."""
        return self._line(self.b, self.a, self.b_as_a_before, self.b_as_a_after)

    def to_rows(self, labels: tuple[str, str] = ("before", "after")) -> list[dict[str, Any]]:
        rows = []
        for gt, pred, before, after in (
            (self.a, self.b, self.a_as_b_before, self.a_as_b_after),
            (self.b, self.a, self.b_as_a_before, self.b_as_a_after),
        ):
            row: dict[str, Any] = {"ground truth": gt, "predicted as": pred, labels[0]: before}
            if after is not None:
                row[labels[1]] = after
                row["Δ"] = f"{after - before:+d}" if after != before else "0"
            rows.append(row)
        return rows


def neither_detected(metrics: MetricsLike, a: str, b: str) -> bool:
    """Whether the model predicted neither class at all (then a pair's zero counts say nothing)."""
    metrics = check_metrics(metrics)
    return all(int(_class_entry(metrics, n).num_pred or 0) == 0 for n in (a, b))


def pair_sentences(before: MetricsLike, after: MetricsLike | None, a: str, b: str) -> list[str]:
    """The confusable pair's counts in words; "neither detected" where zeros would read as a success."""
    cp = confusion_pair(before, after, a, b)
    if neither_detected(after if after is not None else before, a, b):
        who = "the model" if after is None else "the evaluated model"
        return [f"{who} detected neither {a} nor {b} (no prediction of either): the pair's counts say nothing"]
    return [cp.sentence(), cp.reverse_sentence()]


def confusion_pair(before: MetricsLike, after: MetricsLike | None, a: str, b: str) -> ConfusionPair:
    """Counts of ground-truth ``a`` predicted as ``b`` and ``b`` as ``a``, before and after."""
    ab0, ba0 = pair_counts(before, a, b)
    if after is None:
        return ConfusionPair(a, b, ab0, ba0)
    ab1, ba1 = pair_counts(after, a, b)
    return ConfusionPair(a, b, ab0, ba0, ab1, ba1)


def pair_table(models: Sequence[tuple[str, MetricsLike]], a: str, b: str) -> list[dict[str, str]]:
    """One display row per model: mAP, AP@0.5 of ``a`` and ``b``, and their confusions.

    The what-if-descriptions table: which wording separates the pair best.
    """
    rows = []
    ref: tuple[int, int] | None = None
    ref_map: float | None = None
    for i, (label, metrics) in enumerate(models):
        metrics = check_metrics(metrics, source=f"metrics of {label!r}")
        ab, ba = pair_counts(metrics, a, b)
        map50 = as_number(metrics.map50)
        if i == 0:
            ref, ref_map = (ab, ba), map50
        row = {
            "model": label,
            "mAP@0.5": fmt_value(map50),
            "Δ mAP@0.5": MISSING if i == 0 else fmt_delta(delta(ref_map, map50)),
            f"AP@0.5 {a}": fmt_value(metrics.ap50_of(a)),
            f"AP@0.5 {b}": fmt_value(metrics.ap50_of(b)),
            f"{a} → {b}": str(ab),
            f"{b} → {a}": str(ba),
        }
        if i > 0 and ref is not None:
            row[f"{a} → {b}"] += f" ({ab - ref[0]:+d})" if ab != ref[0] else " (0)"
            row[f"{b} → {a}"] += f" ({ba - ref[1]:+d})" if ba != ref[1] else " (0)"
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# single-model table and markdown rendering
# ----------------------------------------------------------------------------------------------
def per_class_rows(metrics: MetricsLike, class_names: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Display rows of one evaluation: per class GT, predictions, AP, precision, recall, F1, conf."""
    metrics = check_metrics(metrics)
    names = list(class_names) if class_names is not None else metrics.class_names
    rows = []
    for name in names:
        e = _class_entry(metrics, name)
        rows.append(
            {
                "class": name,
                "GT": str(e.num_gt) if isinstance(e.num_gt, int) else MISSING,
                "pred": str(e.num_pred) if isinstance(e.num_pred, int) else MISSING,
                "AP@0.5": fmt_value(e.ap50),
                "AP@0.5:0.95": fmt_value(e.ap),
                "precision": fmt_value(e.precision),
                "recall": fmt_value(e.recall),
                "F1": fmt_value(e.f1),
                "conf": fmt_value(e.conf, 2),
            }
        )
    rows.append(
        {
            "class": f"**{OVERALL}**",
            "GT": str(metrics.num_ground_truth) if isinstance(metrics.num_ground_truth, int) else "",
            "pred": str(metrics.num_detections) if isinstance(metrics.num_detections, int) else "",
            "AP@0.5": fmt_value(metrics.map50),
            "AP@0.5:0.95": fmt_value(metrics.map),
            "precision": "",
            "recall": "",
            "F1": "",
            "conf": "",
        }
    )
    return rows
