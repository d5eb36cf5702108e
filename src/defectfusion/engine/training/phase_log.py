"""A phase's evaluation log: ``metrics.jsonl`` (one line per evaluation), ``results.csv``, TensorBoard."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...io import append_line, atomic_write_text, read_jsonl, write_jsonl
from ...structures import Metrics

if TYPE_CHECKING:
    import torch

CSV_COLUMNS = ["phase", "epoch", "step", "map50", "map", "train_loss", "lr", "best", "time"]


def evaluation_record(
    phase: str,
    epoch: int,
    step: int,
    metrics: Metrics,
    epoch_loss: float | None,
    optimizer: torch.optim.Optimizer,
    improved: bool,
) -> dict[str, Any]:
    """One line of ``metrics.jsonl``: an evaluation after ``epoch`` epochs (0: the phase's starting point)."""
    group = optimizer.param_groups[0]
    return {
        "phase": phase,
        "epoch": epoch,
        "step": step,
        "map50": metrics.map50,
        "map": metrics.map,
        "train_loss": epoch_loss if epoch else None,
        "lr": group["lr"] if epoch else None,
        "base_lr": group.get("initial_lr", group["lr"]),  # the configured lr, before warm-up and decay: legends
        "best": improved,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "per_class_ap50": {name: v.ap50 for name, v in metrics.per_class.items()},
    }


class PhaseLog:
    """What a phase records about its evaluations; only the main process keeps one.

    Args:
        folder: the phase folder.
        name: the phase name (TensorBoard tags start with it).
        tensorboard: also write TensorBoard event files to ``folder/tensorboard``.
    """

    def __init__(self, folder: Path, name: str, *, tensorboard: bool):
        self.folder, self.name = Path(folder), name
        self.path = self.folder / "metrics.jsonl"
        self.tensorboard = tensorboard
        self.writer = None

    def open(self, fresh: bool) -> None:
        """Create the folder (and the TensorBoard writer); ``fresh`` removes what an earlier run left."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if fresh:
            for stale in ("metrics.jsonl", "results.csv", "result.json"):
                (self.folder / stale).unlink(missing_ok=True)
        if self.tensorboard and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder / "tensorboard"))

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path, "metrics log") if self.path.is_file() else []

    def append(self, record: dict[str, Any]) -> None:
        """One evaluation: a line of ``metrics.jsonl``, ``results.csv`` rewritten, validation scalars."""
        append_line(self.path, json.dumps(record))
        self._write_csv()
        for key in ("map50", "map"):
            if record.get(key) is not None:
                self.scalar(f"val_{key}", record[key], record["epoch"])

    def keep_through(self, epoch: int) -> list[dict[str, Any]]:
        """Drop the evaluations after ``epoch`` (logged, then killed before saving) and a torn last line."""
        kept = [r for r in self.records() if int(r.get("epoch", 0)) <= epoch]
        write_jsonl(self.path, kept)
        self._write_csv()
        return kept

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(f"{self.name}/{tag}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in self.records():
            writer.writerow(record)
        atomic_write_text(self.folder / "results.csv", buffer.getvalue())
