"""Data-parallel plumbing: a single process needs none of it; devices are checked where they are named.

The two-process runs are in test_resume_ddp.py (gloo on the CPU)."""

from __future__ import annotations

import pytest
import torch

from defectfusion.engine.training.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    init_distributed,
    resolve_device,
)
from defectfusion.errors import ConfigError


def test_a_process_not_launched_by_torchrun_is_the_whole_run(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(0, 1, 0, torch.device("cpu")) and info.is_main and not info.distributed
    barrier(info)  # nothing to wait for
    value = {"gate": "phase1"}
    assert broadcast_object(info, value) is value


def test_a_device_that_is_not_here_is_refused_by_name():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="'cuda:1' but CUDA is not available"):
            resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")
