"""What a phase takes (its data, built once per run) and what it gives back (its outcome, ``result.json``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from ...config import Config
from ...data.coco import CocoDetection, CocoIndex
from ...data.transforms import DetectionCollator, build_eval_transform
from ...io import read_json
from ...models.inference import InputSpec
from ..evaluation.evaluator import DetectionEvaluator


@dataclass
class PhaseData:
    """What a phase needs from the data layer (built once per run)."""

    train_index: CocoIndex
    val_index: CocoIndex
    val_loader: DataLoader
    evaluator: DetectionEvaluator
    collator: DetectionCollator


@dataclass(frozen=True)
class Score:
    """A validation score a phase keeps: its best so far (and that evaluation's epoch), or where it started."""

    map50: float | None = None
    map: float | None = None
    epoch: int = 0

    def to_dict(self, epoch: bool = True) -> dict[str, Any]:
        """Its form in ``last/trainer.json`` (the starting point is stored without an epoch)."""
        return {"map50": self.map50, "map": self.map, **({"epoch": self.epoch} if epoch else {})}


@dataclass
class PhaseOutcome:
    name: str
    best_epoch: int
    best_map50: float | None
    best_map: float | None
    initial_map50: float | None
    initial_map: float | None
    epochs_run: int
    stop_reason: str
    best_dir: str
    seconds: float
    last_epoch: int | None = None  # the last evaluation (what `value: last` gates compare)
    last_map50: float | None = None
    last_map: float | None = None
    frozen_trunk: str = ""  # whether the phase reused its frozen trunk's output, and why (not)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhaseOutcome:
        """The outcome ``asdict`` wrote (``result.json``, ``summary.json``'s ``phases``); fields added since are
        left at their defaults."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def read(cls, path: Path) -> PhaseOutcome:
        return cls.from_dict(read_json(path, "phase result"))


def build_phase_data(
    cfg: Config,
    train_index: CocoIndex,
    val_index: CocoIndex,
    spec: InputSpec,
) -> PhaseData:
    """The validation loader and evaluator of a phase, images prepared as the model takes them (``spec``)."""
    collator = DetectionCollator(spec.mean, spec.std)
    val_dataset = CocoDetection(val_index, build_eval_transform(spec.size, spec.resize))
    val_loader = DataLoader(
        val_dataset,
        batch_size=cfg.data.eval_batch_size or cfg.data.batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        collate_fn=collator,
    )
    evaluator = DetectionEvaluator(val_index.to_coco_dict(), iou_threshold=0.5)
    return PhaseData(train_index, val_index, val_loader, evaluator, collator)


def find_run_folder(checkpoint: str | os.PathLike | None) -> Path | None:
    """The training run folder a checkpoint lives in (``run/final``, ``run/phase1/best``), if any."""
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser().resolve()
    for folder in (path.parent, path.parent.parent):
        if (folder / "summary.json").is_file() and (folder / "config.yaml").is_file():
            return folder
    return None
