"""The training loader of one epoch: a seeded permutation, sharded by process."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.feature_store import FeatureDataset
from .distributed import DistInfo


def epoch_loader(
    dataset: Dataset,
    collate_fn: Callable,
    *,
    seed: int,
    epoch: int,
    info: DistInfo,
    batch_size: int,
    num_workers: int,
) -> DataLoader | Iterable:
    """This process's shard of a permutation drawn from ``(seed, epoch)``: a resumed run sees the epoch an
    uninterrupted one would, and the processes of a data-parallel run see disjoint, equally long shards.
    A frozen trunk's stored maps come through their dataset's loader, which recomputes a damaged file."""
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    if info.world_size > 1:
        order += order[: (-n) % info.world_size]
        order = order[info.rank :: info.world_size]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=len(order) > batch_size,
        generator=torch.Generator().manual_seed(seed + epoch),
        pin_memory=info.device.type == "cuda",
    )
    return dataset.loader(loader) if isinstance(dataset, FeatureDataset) else loader
