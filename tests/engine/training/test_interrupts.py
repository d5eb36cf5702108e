"""Ctrl-C and SIGTERM during training: the state is saved mid-epoch and the printed command resumes it."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from defectfusion.config import load_config
from defectfusion.engine.training.interrupts import StopRequest, TrainingInterrupted
from defectfusion.engine.training.progressive import run_training
from defectfusion.engine.training.trainer import PhaseTrainer
from defectfusion.io import read_json, read_jsonl
from tests.helpers import write_train_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_first_signal_only_asks_and_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"  # the process lives on
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored on leaving


def _two_epoch_config(tmp_path, synth_data):
    phases = {"baseline": {"epochs": 2}}
    return load_config(write_train_config(tmp_path / "cfg.yml", synth_data, order=["baseline"], phases=phases))


def test_a_stop_mid_epoch_saves_and_the_resumed_phase_ends_as_an_uninterrupted_one(tmp_path, synth_data, monkeypatch):
    cfg = _two_epoch_config(tmp_path, synth_data)
    run_training(cfg, tmp_path / "whole", progress=False)  # the control: never interrupted

    asked = []

    def stop_two_batches_into_epoch_two(self):  # as a Ctrl-C during the second batch would
        if not asked and self.epoch == 1 and self.epoch_batches == 2:
            asked.append(self.step)
            self.stop.requested, self.stop.signal_name = True, "SIGINT"
        return self.stop.requested

    monkeypatch.setattr(PhaseTrainer, "_asked_to_stop", stop_two_batches_into_epoch_two)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as caught:
        run_training(cfg, run, progress=False)
    message = str(caught.value)
    assert "baseline stopped by SIGINT 2 batches into epoch 2" in message
    assert message.endswith(f"resume with: defectfusion train --resume --out {run}")
    saved = read_json(run / "baseline" / "last" / "trainer.json", "state")
    assert (saved["epoch"], saved["epoch_batches"], saved["step"]) == (1, 2, asked[0])

    monkeypatch.undo()
    summary = run_training(cfg, run, resume=True, progress=False)
    assert summary["phases"]["baseline"]["epochs_run"] == 2
    assert [r["epoch"] for r in read_jsonl(run / "baseline" / "metrics.jsonl")] == [0, 1, 2]
    whole = read_json(tmp_path / "whole" / "baseline" / "last" / "trainer.json", "state")
    assert read_json(run / "baseline" / "last" / "trainer.json", "state")["step"] == whole["step"]
    for name in ("raw.safetensors", "model.safetensors"):  # restarting the epoch would train 2 batches twice
        resumed, control = (load_file(str(r / "baseline" / "last" / name)) for r in (run, tmp_path / "whole"))
        assert resumed.keys() == control.keys()
        for key in control:
            torch.testing.assert_close(resumed[key], control[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")


# The real CLI in its own process, stopped by a real SIGINT it sends itself after its first trained batch.
_CTRL_C_AFTER_ONE_BATCH = """
import os, signal, sys
from defectfusion.engine.training import trainer
from defectfusion.cli import main
step = trainer.PhaseTrainer._all_finite
def finite_then_ctrl_c(self, loss):
    if self.epoch_batches == 1:
        os.kill(os.getpid(), signal.SIGINT)
    return step(self, loss)
trainer.PhaseTrainer._all_finite = finite_then_ctrl_c
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_in_train_prints_the_resume_command_and_that_command_finishes_the_run(tmp_path, synth_data):
    from defectfusion.cli import main

    config = write_train_config(
        tmp_path / "cfg.yml", synth_data, order=["baseline"], phases={"baseline": {"epochs": 2}}
    )
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-c", _CTRL_C_AFTER_ONE_BATCH, "train", str(config), "--out", str(run), "--threads", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "SIGINT: stopping after the current step" in done.stderr
    found = re.search(r"resume with: (defectfusion train --resume --out \S+)", done.stderr)
    assert found, done.stderr[-2000:]
    assert read_json(run / "baseline" / "last" / "trainer.json", "state")["epoch_batches"] == 1

    assert main(shlex.split(found.group(1))[1:]) == 0
    assert [r["epoch"] for r in read_jsonl(run / "baseline" / "metrics.jsonl")] == [0, 1, 2]
