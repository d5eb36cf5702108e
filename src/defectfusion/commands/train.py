"""``defectfusion train``: a config (or a run folder to resume) -> a run folder with its phases and final model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_config
from ..engine.distributed import shutdown
from ..engine.progressive import run_training
from ..errors import ConfigError


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
) -> TrainResult:
    """Train the phases of ``config`` (a file or packaged name) into ``out`` (default ``runs/<name>``).

    ``config`` None resumes ``out`` with the config saved there.
    """
    if config is None:
        if not (resume and out):
            raise ConfigError("give a config (e.g. the packaged `progressive`), or resume a run folder")
        cfg = load_config(Path(out) / "config.yaml", overrides)
    else:
        cfg = load_config(config, overrides)
    folder = Path(out) if out is not None else Path("runs") / cfg.name
    try:
        summary = run_training(cfg, folder, phase=phase, resume=resume, progress=progress)
    finally:
        shutdown()
    return TrainResult(folder, summary)
