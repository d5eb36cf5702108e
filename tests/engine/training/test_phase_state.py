"""A phase's last state on disk: what a resumed phase reads back, and a state it cannot use refused."""

from __future__ import annotations

import pytest
import torch

from defectfusion.config import load_config
from defectfusion.engine.training.trainer import PhaseTrainer
from tests.helpers import write_train_config

pytestmark = pytest.mark.usefixtures("one_thread")


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


def test_a_last_state_saved_with_other_parameter_groups_is_refused_with_what_to_do(tmp_path, synth_data, monkeypatch):
    from defectfusion.engine.training.phase_state import STATE_FILE
    from defectfusion.engine.training.progressive import run_training
    from defectfusion.errors import CheckpointError

    cfg = load_config(
        write_train_config(tmp_path / "cfg.yml", synth_data, order=["baseline"], phases={"baseline": {"epochs": 2}})
    )
    original_save = PhaseTrainer._save_last

    def die_after_epoch_1(self):
        if self.epoch == 2:
            raise _Killed
        original_save(self)

    monkeypatch.setattr(PhaseTrainer, "_save_last", die_after_epoch_1)
    with pytest.raises(_Killed):
        run_training(cfg, tmp_path / "run", progress=False)
    # as an older version saved it: one parameter group fewer
    path = tmp_path / "run" / "baseline" / "last" / STATE_FILE
    state = torch.load(path, weights_only=True)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:-1]
    torch.save(state, path)
    monkeypatch.setattr(PhaseTrainer, "_save_last", original_save)
    with pytest.raises(CheckpointError, match="does not fit this phase's parameter groups.*restart the phase"):
        run_training(cfg, tmp_path / "run", resume=True, progress=False)
