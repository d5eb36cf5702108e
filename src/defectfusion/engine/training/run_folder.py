"""Whether a train command continues the run in its folder: decided here, once, from the folder and the flags.

A folder holds nothing, a run that never started (its config only: its inputs failed, or it was
killed at once), or a run that made something (an evaluation, a phase's state). Continuing means
keeping the folder's config, summary and finished phases; the phase trainers then resume from
their ``last`` state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...config import Config
from ...errors import ConfigError
from .start_model import previous_phase

CONFIG = "config.yaml"
# What a run makes after its config: any of these means it started.
MADE = ("start/metrics.json", "*/last/trainer.json", "*/result.json", "*/best/config.json")


@dataclass(frozen=True)
class RunFolder:
    """What a run folder holds before a train command writes into it."""

    path: Path
    has_config: bool
    started: bool

    @classmethod
    def inspect(cls, path: str | Path) -> RunFolder:
        path = Path(path)
        started = any(next(path.glob(pattern), None) is not None for pattern in MADE)
        return cls(path, (path / CONFIG).is_file(), started)


@dataclass(frozen=True)
class Continuation:
    """The decision: ``resume`` keeps the folder's run; ``replaces`` names a never-started run it overwrites."""

    resume: bool
    replaces: bool = False


def decide_continuation(folder: RunFolder, resume: bool, phase: str, previous: str | None) -> Continuation:
    """Whether this command continues ``folder``'s run.

    ``phase``: ``"all"`` or the one phase requested (a run continued at that phase, from ``previous``'s
    best in the folder). Raises :class:`ConfigError` for a folder that holds a run this command would
    overwrite, or a phase whose previous phase has not finished there.
    """
    if resume:
        return Continuation(resume=True)
    if not folder.started:
        return Continuation(resume=False, replaces=folder.has_config)
    if phase == "all" or previous is None:  # nothing before the phase to continue from
        raise ConfigError(
            f"run folder {folder.path} already holds a run: pass --resume to continue it, --phase N to train "
            f"its phase N from phase N-1's best, or another --out to start a new one"
        )
    if previous is not None and not (folder.path / previous / "result.json").is_file():
        raise ConfigError(
            f"phase {phase!r} continues from {previous!r}, which has not finished in {folder.path}: run "
            f"`defectfusion train --out {folder.path} --phase {previous}` first (or --resume the run)"
        )
    return Continuation(resume=True)  # the run's own config, summary and finished phases are kept


def decide_for_run(cfg: Config, out: str | Path, resume: bool, phase: str, first: str) -> Continuation:
    """:func:`decide_continuation` for a run of ``cfg`` into ``out`` whose first requested phase is ``first``."""
    previous = previous_phase(cfg, first) if phase != "all" else None
    return decide_continuation(RunFolder.inspect(out), resume, phase, previous)
