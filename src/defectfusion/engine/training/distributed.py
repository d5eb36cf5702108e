"""Data-parallel training with torch's own DDP, started by ``torchrun`` or ``accelerate launch``.

Both launchers set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; with them present the process group is
initialised (NCCL on CUDA, gloo on CPU), each process trains on its shard of every epoch and the
main process alone evaluates and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ...errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {preference!r} but CUDA is not available here; use 'cpu' or 'auto'")
    if preference not in {"cpu"} and not preference.startswith("cuda"):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {preference!r}")
    return torch.device(preference)


def init_distributed(device_preference: str = "auto", timeout_minutes: float = 120.0) -> DistInfo:
    """Join the process group when launched by torchrun/accelerate; a single process otherwise.

    ``timeout_minutes`` bounds how long a collective waits. It must cover what the main process
    does alone while the others wait at a barrier (verifying images, encoding text, validating,
    saving): torch's default (10 minutes on NCCL) kills such runs on large validation sets.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_minutes)
        )
    return DistInfo(rank, world_size, local_rank, device)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(info: DistInfo, value):
    """The main process's ``value`` on every process."""
    if not info.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group (at the end of a data-parallel run; torch warns otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()
