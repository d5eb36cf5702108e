"""Ctrl-C and SIGTERM during training: stop after the current step, save, say how to go on.

:class:`StopRequest` replaces the SIGINT and SIGTERM handlers while a phase trains (main thread
only; elsewhere it does nothing): the first signal only asks the loop to stop, which it does after
the step in progress, so the optimizer, the schedule and the EMA are never caught half-updated; a
second Ctrl-C stops at once. The trainer then saves its state mid-epoch and raises
:class:`TrainingInterrupted`, whose message is the command that resumes the run.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import torch
import torch.distributed as dist

from ...errors import TrainingInterrupted
from .distributed import DistInfo

__all__ = ["StopRequest", "TrainingInterrupted", "interruption", "stop_requested"]


class StopRequest:
    """While entered, SIGINT / SIGTERM set :attr:`requested` instead of killing the process."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: now
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(
            f"\n{self.signal_name}: stopping after the current step to save the run's state (Ctrl-C again: at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def stop_requested(stop: StopRequest, info: DistInfo) -> bool:
    """Whether a signal asked any process to stop: all stop at the same batch, or DDP would hang."""
    asked = torch.tensor([float(stop.requested)], device=info.device)
    if info.distributed:
        dist.all_reduce(asked, op=dist.ReduceOp.MAX)
    return bool(asked.item() > 0)


def interruption(name: str, stop: StopRequest, epoch: int, epochs: int, batches: int, folder: Path) -> str:
    """What stopped phase ``name`` (in ``RUN/name``) where, and the command that resumes it."""
    if epoch >= epochs:
        where = "at the end of the phase"
    else:
        where = f"{batches} batches into epoch {epoch + 1}" if batches else f"before epoch {epoch + 1}"
    return (
        f"{name} stopped by {stop.signal_name or 'a signal'} {where}, its state saved in {folder / 'last'}; "
        f"resume with: defectfusion train --resume --out {folder.parent}"
    )
