"""The training loader of one epoch: seeded, sharded, and resumable in the middle."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from defectfusion.engine.training.distributed import DistInfo
from defectfusion.engine.training.epoch_loader import epoch_loader


class _Indices(Dataset):
    def __len__(self) -> int:
        return 22

    def __getitem__(self, i: int) -> int:
        return i


def _batches(epoch=0, skip=0, rank=0, world=1, seed=0):
    loader = epoch_loader(
        _Indices(), torch.tensor, seed=seed, epoch=epoch, info=DistInfo(rank, world), batch_size=4, num_workers=0,
        skip_batches=skip,
    )  # fmt: skip
    return [b.tolist() for b in loader]


def test_an_epoch_is_a_seeded_permutation_with_its_last_partial_batch_dropped():
    first = _batches()
    assert first == _batches() and first != _batches(epoch=1) and first != _batches(seed=1)
    assert len(first) == 5 and len({i for b in first for i in b}) == 20  # 22 images: 2 left out


def test_the_processes_see_disjoint_equal_shards():
    ranks = [_batches(rank=r, world=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    seen = [{i for b in r for i in b} for r in ranks]
    assert not seen[0] & seen[1]


def test_a_resumed_epoch_is_the_rest_of_the_same_epoch():
    whole = _batches(epoch=3)
    for done in range(len(whole) + 1):
        assert _batches(epoch=3, skip=done) == whole[done:], done
