"""What a finished training run tells those who use it (a study): read from its folder by one function."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...io import read_json
from .phase_records import PhaseOutcome


@dataclass(frozen=True)
class RunRecord:
    """A run's final model (``final_phase``, chosen on validation, and why) and, when it had a test split,
    where its test scores are: the evaluator's metrics and the COCO results of every detection, with the
    fusion head's text usage there (``None``: no fusion head)."""

    folder: Path
    final_phase: str | None
    final_reason: str | None
    test_metrics: Path | None
    test_results: Path | None
    text_usage: Mapping[str, Any] | None
    phase_bests: Mapping[str, Path]  # each trained phase's best model, in the order they ran

    @property
    def finished(self) -> bool:
        return self.final_phase is not None


def entry_metrics_file(entry: Mapping[str, Any]) -> Path | None:
    """The metrics file of a test split's entry (``final``, ``baseline``): the one it names, or, in runs written
    before entries named it, the ``*_metrics.json`` beside its ``*_results.json``."""
    if entry.get("metrics"):
        return Path(entry["metrics"])
    results = entry.get("results")
    return Path(results).with_name(Path(results).name.replace("_results", "_metrics")) if results else None


def read_run_record(folder: str | Path) -> RunRecord | None:
    """The :class:`RunRecord` of the run in ``folder`` (its ``summary.json``); ``None`` before it has one."""
    folder = Path(folder)
    if not (folder / "summary.json").is_file():
        return None
    summary = read_json(folder / "summary.json", "run summary")
    final = summary.get("final") or {}
    test = (summary.get("test") or {}).get("final") or {}
    return RunRecord(
        folder,
        final.get("phase"),
        final.get("reason"),
        entry_metrics_file(test),
        Path(test["results"]) if test.get("results") else None,
        test.get("text_usage"),
        {name: Path(PhaseOutcome.from_dict(p).best_dir) for name, p in (summary.get("phases") or {}).items()},
    )
