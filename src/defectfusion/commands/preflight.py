"""Before anything trains: every input a run would reject, for every run, in one error.

A run checks its inputs as it meets them: the datasets, then the starting checkpoint, then the
class descriptions and the text encoder. A study of many runs learns of a typo only when each of
them has started and died. :func:`check_runs` asks the same questions of every run up front, with
the run's own readers and rules (:func:`~..engine.training.datasets.load_datasets`,
:func:`~..data.descriptions.load_descriptions` and ``ordered_like``,
:func:`~..models.text.build_text_encoder`, :func:`~..engine.training.progressive.select_phases` ...), and
raises one :class:`~..errors.ConfigError` listing every problem, one line each, naming the field and
the runs it concerns. It reads annotation files and file headers, never images (``verify_images`` is
the run's own, longer check), and loads no model: seconds, not minutes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..data.coco import CocoIndex, CocoWarning, load_coco
from ..data.descriptions import load_descriptions, resolve_pair
from ..engine.training.datasets import load_datasets
from ..engine.training.distributed import resolve_device
from ..engine.training.progressive import check_phases, select_phases
from ..engine.training.start_model import previous_phase, trains_the_detector
from ..engine.training.trunk_cache import check_cache_setting
from ..errors import CheckpointError, ConfigError, DefectFusionError
from ..models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_model_config
from ..models.text import FileTextEncoder, build_text_encoder
from .study_plan import StudyPlan

#: How many run names a problem line shows before "and N more".
SHOWN_RUNS = 6


@dataclass(frozen=True)
class RunToCheck:
    """One run to check: how messages name it, its config (loaded or a file), where it trains."""

    name: str
    config: Config | str | os.PathLike
    folder: str | os.PathLike | None = None  # a run continued at a later phase starts from its own best
    phase: str = "all"  # which phases it trains (``train --phase``)
    planned_start: bool = False  # its model.checkpoint is written by an earlier run of the same plan


@dataclass(frozen=True)
class Problem:
    """One input a run would reject: the config field (or file) it concerns and the run's own message."""

    field: str
    message: str

    def line(self) -> str:
        return self.message if self.message.startswith(self.field) else f"{self.field}: {self.message}"


class _Checks:
    """The checks of many runs; one answer per distinct input (a study's runs share most of theirs)."""

    def __init__(self, device_here: bool):
        self.device_here = device_here
        self._memo: dict[Hashable, Any] = {}

    def _once(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            try:
                self._memo[key] = compute()
            except DefectFusionError as exc:
                self._memo[key] = exc
        return self._memo[key]

    def _coco(self, annotations: str, images: str | None) -> CocoIndex | DefectFusionError:
        return self._once(("coco", annotations, images), lambda: load_coco(annotations, images))

    def run(self, item: RunToCheck) -> list[Problem]:
        if isinstance(item.config, Config):
            cfg = item.config
        else:
            cfg = self._once(("config", str(item.config)), lambda: load_config(item.config))
            if isinstance(cfg, DefectFusionError):
                return [Problem("config", str(cfg))]
        problems: list[Problem] = []

        def attempt(field: str, check: Callable[[], Any]) -> Any:
            try:
                return check()
            except DefectFusionError as exc:
                problems.append(Problem(field, str(exc)))
                return None

        names = attempt("order" if item.phase == "all" else "phase", lambda: select_phases(cfg, item.phase)) or []
        attempt("phases", lambda: check_phases(cfg, names))
        attempt("train.cache_frozen", lambda: check_cache_setting(cfg, names))
        attempt("train.device", lambda: self._device(cfg.train.device))
        classes = self._data(cfg, problems)
        if not item.planned_start:
            self._start(cfg, names, item.folder, classes, problems)
        if any(cfg.phases[n].fusion for n in names):
            self._text(cfg, classes, problems)
        if cfg.data.confusable_pair is not None and classes is not None:
            attempt("data.confusable_pair", lambda: resolve_pair(None, classes, (), cfg.data.confusable_pair))
        return problems

    def _device(self, device: str) -> None:
        # A Slurm study is planned where its GPUs may not be: there, only the spelling is checked.
        if self.device_here or not device.startswith("cuda"):
            resolve_device(device)

    def _data(self, cfg: Config, problems: list[Problem]) -> list[str] | None:
        """The training classes, or None when the splits cannot be read (each problem recorded)."""
        loaded: dict[str, CocoIndex] = {}
        for key in ("train", "val", "test"):
            split = getattr(cfg.data, key)
            if split is None:
                continue
            index = self._coco(split.annotations, split.images)
            if isinstance(index, DefectFusionError):
                problems.append(Problem(f"data.{key}", str(index)))
            else:
                loaded[key] = index
        if len(loaded) == sum(getattr(cfg.data, k) is not None for k in ("train", "val", "test")):
            # the rules between splits (same classes, test images not trained on, ...)
            key = ("datasets", cfg.data.model_dump_json(include={"train", "val", "test"}))
            together = self._once(key, lambda: load_datasets(cfg, verify=False, progress=False))
            if isinstance(together, DefectFusionError):
                problems.append(Problem("data", str(together)))
        first = loaded.get("train") or loaded.get("val")
        return list(first.class_names) if first is not None else None

    def _start(
        self, cfg: Config, names: list[str], folder: Any, classes: list[str] | None, problems: list[Problem]
    ) -> None:
        """What :func:`~..engine.training.start_model.start_model` would start the first phase from."""
        if not names:
            return
        first = names[0]
        previous = previous_phase(cfg, first)
        if folder is not None and previous and (Path(folder) / previous / "best" / CONFIG_NAME).is_file():
            return  # continues from its own previous phase
        if cfg.model.checkpoint:
            found = self._once(("checkpoint", cfg.model.checkpoint), lambda: _checkpoint_classes(cfg.model.checkpoint))
            if isinstance(found, DefectFusionError):
                problems.append(Problem("model.checkpoint", str(found)))
            elif classes is not None and found != classes:
                problems.append(
                    Problem(
                        "model.checkpoint",
                        f"{cfg.model.checkpoint} was trained for classes {found}, the dataset has {classes}; use a "
                        f"checkpoint of this dataset (same classes, same order)",
                    )
                )
        elif cfg.phases[first].fusion and not trains_the_detector(cfg.phases[first]):
            problems.append(
                Problem(
                    "model.checkpoint",
                    f"phase {first!r} starts from a trained model and none is set: set model.checkpoint (e.g. the "
                    f"folder `defectfusion convert` wrote, or a trained run's final/)",
                )
            )
        elif cfg.model.backbone_weights and not Path(cfg.model.backbone_weights).expanduser().exists():
            problems.append(Problem("model.backbone_weights", f"{cfg.model.backbone_weights} does not exist"))

    def _text(self, cfg: Config, classes: list[str] | None, problems: list[Problem]) -> None:
        """The descriptions (each class exactly once) and the text encoder, as the run's ``_text`` reads them."""
        spec, source = cfg.fusion.encoder, cfg.fusion.descriptions
        descriptions = self._once(("descriptions", source), lambda: load_descriptions(source))
        if isinstance(descriptions, DefectFusionError):
            problems.append(Problem("fusion.descriptions", str(descriptions)))
            descriptions = None
        elif classes is not None:
            key = ("described", source, tuple(classes))
            descriptions = self._once(key, lambda: descriptions.ordered_like(classes))
            if isinstance(descriptions, DefectFusionError):
                problems.append(Problem("fusion.descriptions", str(descriptions)))
                descriptions = None
        prompts = tuple(p for ps in descriptions.prompts() for p in ps) if descriptions is not None else None
        found = self._once(("encoder", spec, prompts), lambda: _check_encoder(spec, prompts))
        if isinstance(found, DefectFusionError):
            problems.append(Problem("fusion.encoder", str(found)))


def _checkpoint_classes(path: str) -> list[str]:
    """The classes of a detector folder, from its config alone (the weights are not read)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is a file; a detector checkpoint is a folder with config.json" if folder.exists() else "does not exist"
        raise CheckpointError(f"checkpoint {str(folder)!r} {what}")
    config = read_model_config(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder}: {WEIGHTS_NAME} is missing (sharded or .bin checkpoints are not supported)")
    return [config.id2label[i] for i in range(config.num_labels)]


def _check_encoder(spec: str, prompts: tuple[str, ...] | None) -> None:
    """The spec parses; a file of embeddings holds every prompt; a local model folder exists. Nothing is loaded."""
    encoder = build_text_encoder(spec)
    if isinstance(encoder, FileTextEncoder):
        if prompts is not None:
            encoder.encode(list(prompts))  # a look-up in the file, the run's own rule
        elif not encoder.path.is_file():
            raise ConfigError(f"embeddings file {str(encoder.path)!r} does not exist")
        return
    target = spec.partition(":")[2]
    if target.startswith(("/", "~", ".")) and not Path(target).expanduser().exists():
        raise ConfigError(f"text encoder {spec!r}: the model folder {target} does not exist")


def _runs_text(names: list[str], total: int) -> str:
    if total > 1 and len(names) == total:
        return f"all {total} runs"
    shown = ", ".join(names[:SHOWN_RUNS])
    return shown + (f" and {len(names) - SHOWN_RUNS} more" if len(names) > SHOWN_RUNS else "")


def run_problems(runs: Sequence[RunToCheck], *, device_here: bool = True) -> dict[Problem, list[str]]:
    """Every problem of ``runs``, each once, with the names of the runs it concerns (in order)."""
    checks = _Checks(device_here)
    found: dict[Problem, list[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CocoWarning)  # the run itself says it, once
        for item in runs:
            for problem in checks.run(item):
                names = found.setdefault(problem, [])
                if item.name not in names:
                    names.append(item.name)
    return found


def check_runs(runs: Sequence[RunToCheck], *, device_here: bool = True, what: str | None = None) -> None:
    """Raise one :class:`ConfigError` listing every problem of every run in ``runs``; nothing when none.

    ``device_here``: the runs train on this machine (False for Slurm: ``cuda`` is not required here).
    ``what``: how the message names the whole (default: the runs, or the one run's name).
    """
    found = run_problems(runs, device_here=device_here)
    if not found:
        return
    single = len(runs) == 1
    subject = what or (runs[0].name if single else f"the {len(runs)} runs")
    lines = [p.line() if single else f"{p.line()} [{_runs_text(names, len(runs))}]" for p, names in found.items()]
    if len(lines) == 1:
        raise ConfigError(f"{subject}: {lines[0]} (nothing was trained)")
    listed = "\n".join(f"  - {line}" for line in lines)
    raise ConfigError(f"{subject}: {len(lines)} problems, nothing was trained; fix them all:\n{listed}")


def check_plan(plan: StudyPlan, *, device_here: bool = True) -> None:
    """:func:`check_runs` for every run of a study plan before any starts (Slurm: ``device_here=False``)."""
    planned = {str(Path(r.folder) / "final") for r in plan.runs}  # checkpoints the plan's own runs write
    runs = []
    for run in plan.runs:
        cfg = run.load()
        runs.append(RunToCheck(run.key, cfg, run.folder, planned_start=cfg.model.checkpoint in planned))
    check_runs(runs, device_here=device_here, what=f"study {plan.name}")


def check_config(cfg: Config, name: str, *, folder: str | os.PathLike | None = None, phase: str = "all") -> None:
    """:func:`check_runs` for the one run of ``defectfusion train``."""
    check_runs([RunToCheck(name, cfg, folder, phase)])
