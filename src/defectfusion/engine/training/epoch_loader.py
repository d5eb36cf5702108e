"""The training loader of one epoch: a seeded permutation, sharded by process."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset

from ...data.feature_store import FeatureDataset
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
    skip_batches: int = 0,
) -> DataLoader | Iterable:
    """This process's shard of a permutation drawn from ``(seed, epoch)``: a resumed run sees the epoch an
    uninterrupted one would, and the processes of a data-parallel run see disjoint, equally long shards.
    A frozen trunk's stored maps come through their dataset's loader, which recomputes a damaged file.
    ``skip_batches``: the shard's first batches are left out (a phase resumed in the middle of this epoch);
    the rest are the very batches the uninterrupted epoch had (each sample's randomness comes from its
    ``(seed, epoch, index)``)."""
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    if info.world_size > 1:
        order += order[: (-n) % info.world_size]
        order = order[info.rank :: info.world_size]
    drop_last = len(order) > batch_size  # as the whole epoch would
    order = order[skip_batches * batch_size :]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed + epoch),
        pin_memory=info.device.type == "cuda",
    )
    return dataset.loader(loader) if isinstance(dataset, FeatureDataset) else loader
