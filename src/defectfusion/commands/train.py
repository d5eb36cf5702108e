"""``defectfusion train``: a config (or a run folder to resume) -> a run folder with its phases and final model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_config
from ..engine.training.distributed import shutdown
from ..engine.training.progressive import run_training, select_phases
from ..engine.training.run_folder import decide_for_run
from ..errors import ConfigError
from .preflight import check_config


@dataclass
class TrainResult:
    out: Path
    summary: dict[str, Any]


def train(
    config: str | os.PathLike | None,
    out: str | os.PathLike | None = None,
    *,
    phase: str = "all",
    resume: bool = False,
    overrides: Sequence[str] = (),
    progress: bool = True,
    go_past: Sequence[str] = (),
) -> TrainResult:
    """Train the phases of ``config`` (a file or packaged name) into ``out`` (default ``runs/<name>``).

    ``config`` None resumes ``out`` with the config saved there. ``go_past``: phases whose gate
    stopped the run and that the user decides to go past (recorded in ``summary.json``).

    ``phase`` naming one phase of a run already in ``out`` continues that run: the phase starts
    from the previous phase's best there, past its gate (an override recorded in ``summary.json``
    when the gate had stopped the run).

    Before anything trains, every input the run would reject is checked (:mod:`.preflight`): one
    :class:`ConfigError` lists them all.
    """
    if config is None:
        if not (out and (Path(out) / "config.yaml").is_file()):
            raise ConfigError("give a config (e.g. the packaged `progressive`), or resume a run folder")
        cfg = load_config(Path(out) / "config.yaml", overrides)
    else:
        cfg = load_config(config, overrides)
    folder = Path(out) if out is not None else Path("runs") / cfg.name
    # whether this continues the folder's run: decided once, here, before the input checks, and passed down
    continuation = decide_for_run(cfg, folder, resume, phase, select_phases(cfg, phase)[0])
    # every input the run would reject, all at once, before anything trains
    check_config(cfg, str(config if config is not None else folder / "config.yaml"), folder=folder, phase=phase)
    try:
        summary = run_training(
            cfg, folder, phase=phase, resume=resume, progress=progress, go_past=go_past, continuation=continuation
        )
    finally:
        shutdown()
    return TrainResult(folder, summary)


def _cell(value: Any) -> str:
    """A metric for the table; undefined ones (no boxes of a class, no detection) as a dash."""
    return "–" if value is None else f"{float(value):.3f}"


def final_class_rows(summary: dict[str, Any], out: str | os.PathLike) -> list[dict[str, str]]:
    """Per class, the final model's validation AP (and test AP when the run has a test split), for display."""
    from ..report.values import load_metrics

    final = summary.get("final") or {}
    source = final.get("source")
    if not source or not (Path(source) / "metrics.json").is_file():
        return []
    val = load_metrics(Path(source) / "metrics.json")
    test_file = Path(out) / "test" / "final_metrics.json"
    test = load_metrics(test_file) if test_file.is_file() else None
    rows = []
    for name, c in val.per_class.items():
        row = {
            "class": name,
            "val boxes": "" if c.num_gt is None else str(c.num_gt),
            "val AP@0.5": _cell(c.ap50),
            "val AP@0.5:0.95": _cell(c.ap),
            "precision": _cell(c.precision),
            "recall": _cell(c.recall),
        }
        if test is not None:
            row["test AP@0.5"] = _cell(test.ap50_of(name))
        rows.append(row)
    overall = {
        "class": "**all**",
        "val boxes": "" if val.num_ground_truth is None else str(val.num_ground_truth),
        "val AP@0.5": _cell(val.map50),
        "val AP@0.5:0.95": _cell(val.map),
        "precision": "",
        "recall": "",
    }
    if test is not None:
        overall["test AP@0.5"] = _cell(test.map50)
    return [*rows, overall]
