"""The model a run's first requested phase starts from, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import Config
from ...errors import CheckpointError, ConfigError
from ...models.backbone_weights import load_backbone_weights
from ...models.checkpoint import load_detector
from ...models.detector import DefectDetector, build_detector

#: How a start from random weights is named in ``summary.json`` (``start_model``).
RANDOM_START = "random initialisation"
# Where a start came from (``Start.kind``).
PREVIOUS_PHASE, CHECKPOINT, RANDOM = "previous phase", "checkpoint", "random"


@dataclass(frozen=True)
class Start:
    """The model a run's first phase starts from: ``source`` says where from (a folder, or :data:`RANDOM_START`
    ...), ``kind`` how: :data:`PREVIOUS_PHASE` (this run folder's, a run continued at a later phase),
    :data:`CHECKPOINT` (``model.checkpoint``: the baseline) or :data:`RANDOM`."""

    model: DefectDetector
    source: str
    kind: str


def trains_the_detector(phase) -> bool:
    """A phase that trains the detector's own heads and trunk can start from random weights."""
    return {"encoder", "decoder", "class_head"} <= set(phase.trainable)


def previous_phase(cfg: Config, name: str) -> str | None:
    """The phase before ``name``: in ``cfg.order`` when it is there, else in the order phases are defined."""
    sequence = cfg.order if name in cfg.order else list(cfg.phases)
    index = sequence.index(name)
    return sequence[index - 1] if index > 0 else None


def start_model(cfg: Config, out: Path, first: str, class_names: list[str]) -> Start:
    """The model phase ``first`` starts from (a :class:`Start`).

    The previous phase's best in this run folder comes first (a run continued at a later phase),
    then ``model.checkpoint``, then random weights for a phase that may start from them.
    """
    phase = cfg.phases[first]
    previous = previous_phase(cfg, first)
    best = Path(out) / previous / "best" if previous else None
    if best is not None and (best / "config.json").is_file():
        model, source, kind = load_detector(best), str(best), PREVIOUS_PHASE
    elif cfg.model.checkpoint:
        model, source, kind = load_detector(cfg.model.checkpoint), cfg.model.checkpoint, CHECKPOINT
    elif not phase.fusion or trains_the_detector(phase):
        # The baseline, or a phase that trains the detector with its fusion (option 2).
        torch.manual_seed(cfg.seed)
        model, source = build_detector(cfg.model, class_names), RANDOM_START
        if cfg.model.backbone_weights:
            load_backbone_weights(model, cfg.model.backbone_weights)
            source = f"{RANDOM_START}, backbone from {cfg.model.backbone_weights}"
        return Start(model, source, RANDOM)
    else:
        raise ConfigError(
            f"phase {first!r} starts from a trained model: set model.checkpoint (e.g. the folder "
            f"`defectfusion convert` wrote) or run the previous phase ({previous}) into {out} first"
        )
    if model.class_names != class_names:
        raise CheckpointError(
            f"{source} was trained for classes {model.class_names}, the dataset has {class_names}; "
            f"use a checkpoint of this dataset (same classes, same order)"
        )
    if cfg.model.image_size or cfg.model.resize:
        model.set_image_size(cfg.model.image_size, cfg.model.resize)
    return Start(model, source, kind)
