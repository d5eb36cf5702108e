"""Side-by-side comparison of evaluation results (pure functions on ``metrics.json`` dicts).

A metrics dict is what the evaluator writes to ``metrics.json``::

    {"map50": float|None, "map": float|None,
     "per_class": {name: {"ap50": float|None, "ap": float|None, ...}},
     "confusion_matrix": {"labels": [..., "background"], "counts": [[int]], ...}}

``None`` means *undefined* (e.g. a class absent from the validation set). It is carried through
every comparison: a delta involving an undefined value is undefined too, never 0.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectfusion.errors import DefectFusionError
from defectfusion.io import read_json

#: Shown wherever a value is undefined (``None`` in ``metrics.json``).
MISSING = "–"
#: The row name used for the dataset-wide mAP in comparison tables.
OVERALL = "all classes (mAP)"
#: The metrics compared per class, with their column headers.
METRICS: tuple[tuple[str, str], ...] = (("ap50", "AP@0.5"), ("ap", "AP@0.5:0.95"))

Metrics = Mapping[str, Any]


# ----------------------------------------------------------------------------------------------
# formatting helpers (shared with the plots and the report)
# ----------------------------------------------------------------------------------------------
def as_number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when undefined (None, NaN, inf, COCO's -1)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(out) or out < 0:
        return None
    return out


def fmt_value(value: Any, digits: int = 3) -> str:
    """A metric for display: ``0.785`` or ``–`` when undefined."""
    number = as_number(value)
    return MISSING if number is None else f"{number:.{digits}f}"


def fmt_delta(value: float | None, digits: int = 3) -> str:
    """A signed difference for display: ``+0.035``, ``-0.012``, ``0.000`` or ``–``."""
    if value is None or not math.isfinite(value):
        return MISSING
    rounded = round(value, digits)
    if rounded == 0:
        return f"{0:.{digits}f}"
    return f"{rounded:+.{digits}f}"


def delta(before: float | None, after: float | None) -> float | None:
    """``after - before``; ``None`` when either side is undefined."""
    if before is None or after is None:
        return None
    return after - before


# ----------------------------------------------------------------------------------------------
# input checking
# ----------------------------------------------------------------------------------------------
def load_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``metrics.json`` written by the evaluator, with a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DefectFusionError(f"{path}: no such metrics file; run `defectfusion evaluate` first")
    data = read_json(path, "metrics file")
    check_metrics(data, source=str(path))
    return data


def check_metrics(metrics: Any, source: str = "metrics") -> None:
    """Raise :class:`DefectFusionError` unless ``metrics`` looks like the evaluator's output."""
    if not isinstance(metrics, Mapping):
        raise DefectFusionError(
            f"{source}: expected a metrics dict (the evaluator's metrics.json), got {type(metrics).__name__}"
        )
    per_class = metrics.get("per_class")
    if not isinstance(per_class, Mapping):
        raise DefectFusionError(
            f"{source}: field 'per_class' must be a dict {{class name: {{'ap50', 'ap', ...}}}}, "
            f"got {type(per_class).__name__}; is this the evaluator's metrics.json?"
        )


def _class_entry(metrics: Metrics, name: str) -> Mapping[str, Any]:
    entry = metrics["per_class"].get(name)
    return entry if isinstance(entry, Mapping) else {}


def _union_names(models: Sequence[Metrics]) -> list[str]:
    names: list[str] = []
    for metrics in models:
        for name in metrics["per_class"]:
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
    before: Metrics,
    after: Metrics,
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
    models: Sequence[tuple[str, Metrics]], class_names: Sequence[str] | None = None
) -> ComparisonTable:
    """Compare any number of evaluations (e.g. one per description file); the first is the reference."""
    if not models:
        raise DefectFusionError("compare_many: expected at least one (label, metrics) pair, got none")
    labels = tuple(str(label) for label, _ in models)
    if len(set(labels)) != len(labels):
        raise DefectFusionError(f"compare_many: model labels must be unique, got {list(labels)}")
    for label, metrics in models:
        check_metrics(metrics, source=f"metrics of {label!r}")
    dicts = [m for _, m in models]
    names = list(class_names) if class_names is not None else _union_names(dicts)
    rows = []
    for name in names:
        entries = [_class_entry(m, name) for m in dicts]
        values = {metric: tuple(as_number(e.get(metric)) for e in entries) for metric, _ in METRICS}
        num_gt = tuple(e.get("num_gt") if isinstance(e.get("num_gt"), int) else None for e in entries)
        rows.append(ComparisonRow(name, False, values, num_gt))
    overall = {
        "ap50": tuple(as_number(m.get("map50")) for m in dicts),
        "ap": tuple(as_number(m.get("map")) for m in dicts),
    }
    rows.append(ComparisonRow(OVERALL, True, overall, tuple(None for _ in dicts)))
    return ComparisonTable(labels, tuple(rows))


# ----------------------------------------------------------------------------------------------
# the confusable pair
# ----------------------------------------------------------------------------------------------
def pair_counts(metrics: Metrics, a: str, b: str) -> tuple[int, int]:
    """``(GT a predicted as b, GT b predicted as a)`` from the confusion matrix's raw counts.

    Rows of ``confusion_matrix.counts`` are ground truth, columns are predictions.
    """
    cm = metrics.get("confusion_matrix") if isinstance(metrics, Mapping) else None
    if not isinstance(cm, Mapping) or "labels" not in cm or "counts" not in cm:
        raise DefectFusionError(
            "metrics: field 'confusion_matrix' with 'labels' and 'counts' is missing; "
            "re-run the evaluation with a current defectfusion"
        )
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


def confusion_pair(before: Metrics, after: Metrics | None, a: str, b: str) -> ConfusionPair:
    """Counts of ground-truth ``a`` predicted as ``b`` and ``b`` as ``a``, before and after."""
    ab0, ba0 = pair_counts(before, a, b)
    if after is None:
        return ConfusionPair(a, b, ab0, ba0)
    ab1, ba1 = pair_counts(after, a, b)
    return ConfusionPair(a, b, ab0, ba0, ab1, ba1)


def pair_table(models: Sequence[tuple[str, Metrics]], a: str, b: str) -> list[dict[str, str]]:
    """One display row per model: mAP, AP@0.5 of ``a`` and ``b``, and their confusions.

    The what-if-descriptions table: which wording separates the pair best.
    """
    rows = []
    ref: tuple[int, int] | None = None
    ref_map: float | None = None
    for i, (label, metrics) in enumerate(models):
        check_metrics(metrics, source=f"metrics of {label!r}")
        ab, ba = pair_counts(metrics, a, b)
        map50 = as_number(metrics.get("map50"))
        if i == 0:
            ref, ref_map = (ab, ba), map50
        row = {
            "model": label,
            "mAP@0.5": fmt_value(map50),
            "Δ mAP@0.5": MISSING if i == 0 else fmt_delta(delta(ref_map, map50)),
            f"AP@0.5 {a}": fmt_value(_class_entry(metrics, a).get("ap50")),
            f"AP@0.5 {b}": fmt_value(_class_entry(metrics, b).get("ap50")),
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
def per_class_rows(metrics: Metrics, class_names: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Display rows of one evaluation: per class GT, predictions, AP, precision, recall, F1, conf."""
    check_metrics(metrics)
    names = list(class_names) if class_names is not None else list(metrics["per_class"])
    rows = []
    for name in names:
        e = _class_entry(metrics, name)
        rows.append(
            {
                "class": name,
                "GT": str(e["num_gt"]) if isinstance(e.get("num_gt"), int) else MISSING,
                "pred": str(e["num_pred"]) if isinstance(e.get("num_pred"), int) else MISSING,
                "AP@0.5": fmt_value(e.get("ap50")),
                "AP@0.5:0.95": fmt_value(e.get("ap")),
                "precision": fmt_value(e.get("precision")),
                "recall": fmt_value(e.get("recall")),
                "F1": fmt_value(e.get("f1")),
                "conf": fmt_value(e.get("conf"), 2),
            }
        )
    rows.append(
        {
            "class": f"**{OVERALL}**",
            "GT": str(metrics["num_ground_truth"])
            if isinstance(metrics.get("num_ground_truth"), int)
            else "",
            "pred": str(metrics["num_detections"]) if isinstance(metrics.get("num_detections"), int) else "",
            "AP@0.5": fmt_value(metrics.get("map50")),
            "AP@0.5:0.95": fmt_value(metrics.get("map")),
            "precision": "",
            "recall": "",
            "F1": "",
            "conf": "",
        }
    )
    return rows


def format_cell(value: Any) -> str:
    """Any table value as text: ``None`` -> ``–``, floats to three decimals."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else MISSING
    return str(value)


_NUMBER = re.compile(r"^[+\-±]?\d[\d.,]*%?( \([+\-±]?\d[\d.,]*\))?$")


def is_numeric_text(text: str) -> bool:
    """True for cells that read as numbers (``0.785``, ``+3``, ``12 (-5)``, ``–``): right-aligned."""
    return text == MISSING or bool(_NUMBER.match(text))


def numeric_columns(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Columns whose every non-empty cell reads as a number."""
    columns = list(rows[0]) if rows else []
    out = set()
    for c in columns:
        cells = [format_cell(r.get(c)) for r in rows]
        cells = [t for t in cells if t]
        if cells and all(is_numeric_text(t) for t in cells):
            out.add(c)
    return out


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table; columns are the keys of the first row, in order."""
    if not rows:
        return ""
    columns = list(rows[0])

    def cell(text: Any) -> str:
        text = format_cell(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
        return text.replace("<", "&lt;")  # user text must not become raw HTML

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |"]
    numeric = numeric_columns(rows)
    lines.append("|" + "|".join("---:" if c in numeric else "---" for c in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)
