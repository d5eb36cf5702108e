"""Metric values as numbers and as text: undefined stays undefined, tables in markdown.

``None`` in ``metrics.json`` means *undefined* (e.g. a class absent from the validation set); it
is shown as ``–`` and never as 0.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DefectFusionError
from ..io import read_json
from ..structures import Metrics

#: Shown wherever a value is undefined (``None`` in ``metrics.json``).
MISSING = "–"
#: The row name used for the dataset-wide mAP in comparison tables.
OVERALL = "all classes (mAP)"
#: The metrics compared per class, with their column headers.
METRICS: tuple[tuple[str, str], ...] = (("ap50", "AP@0.5"), ("ap", "AP@0.5:0.95"))

#: What the report functions take: the evaluator's :class:`Metrics`, or its dict (``metrics.json``).
MetricsLike = Metrics | Mapping[str, Any]


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
def load_metrics(path: str | os.PathLike) -> Metrics:
    """Read a ``metrics.json`` written by the evaluator, with a clear error if it is not one.

    The one reader of metrics files: every command that reads one back comes here.
    """
    path = Path(path)
    if not path.is_file():
        raise DefectFusionError(f"{path}: no such metrics file; run `defectfusion evaluate` first")
    return check_metrics(read_json(path, "metrics file"), source=str(path))


def check_metrics(metrics: Any, source: str = "metrics") -> Metrics:
    """``metrics`` as :class:`Metrics` (the record itself, or its dict read back); a
    :class:`DefectFusionError` unless it is the evaluator's output."""
    if isinstance(metrics, Metrics):
        return metrics
    try:
        return Metrics.from_dict(metrics)
    except TypeError as e:
        raise DefectFusionError(f"{source}: {e}") from None


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


def confusion_matrix(metrics: MetricsLike, what: str = "metrics") -> Mapping[str, Any]:
    """The evaluator's ``confusion_matrix`` dict (from a metrics dict or the matrix itself), checked square."""
    if isinstance(metrics, Metrics):
        metrics = metrics.confusion_matrix
    cm = metrics.get("confusion_matrix", metrics) if isinstance(metrics, Mapping) else None
    if not isinstance(cm, Mapping) or "labels" not in cm or "counts" not in cm:
        raise DefectFusionError(
            f"{what}: no 'confusion_matrix' with 'labels' and 'counts' (the evaluator's metrics.json holds one); "
            f"re-run the evaluation with a current defectfusion"
        )
    n = len(cm["labels"])
    counts = cm["counts"]
    if len(counts) != n or any(len(r) != n for r in counts):
        raise DefectFusionError(
            f"{what}: confusion_matrix 'counts' must be {n} x {n} (one row and column per label), "
            f"got {len(counts)} rows"
        )
    return cm
