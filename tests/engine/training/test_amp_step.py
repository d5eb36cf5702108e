"""fp16's grad-scaler step in the trainer: a step the scaler skips (an inf/nan gradient) advances
neither the learning-rate schedule nor the EMA, on CPU, with a stand-in for the CUDA scaler and with
torch's own GradScaler on CPU under fp16 autocast."""

from __future__ import annotations

import pytest
import torch

from defectfusion.config import load_config
from defectfusion.data.coco import load_coco
from defectfusion.engine.training.amp_step import scaled_step
from defectfusion.engine.training.distributed import DistInfo
from defectfusion.engine.training.phase_records import build_phase_data
from defectfusion.engine.training.precision import Precision
from defectfusion.engine.training.trainer import PhaseTrainer
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.inference import InputSpec
from tests.helpers import write_train_config

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 6  # 24 training images, batches of 4


class SkippingScaler:
    """The ``torch.amp.GradScaler`` interface the trainer uses; the steps numbered in ``skip`` (from 0)
    find an inf gradient: no optimiser step, the scale halves, as CUDA's scaler does."""

    def __init__(self, skip: set[int], scale: float = 2.0**16):
        self.skip, self.scale_value, self.calls = set(skip), scale, 0
        self.stepped: list[bool] = []

    def scale(self, loss):
        return loss * self.scale_value

    def unscale_(self, optimizer):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(self.scale_value)

    def step(self, optimizer):
        found_inf = self.calls in self.skip
        self.stepped.append(not found_inf)
        if not found_inf:
            optimizer.step()

    def update(self):
        if self.calls in self.skip:
            self.scale_value *= 0.5
        self.calls += 1

    def get_scale(self) -> float:
        return self.scale_value

    def is_enabled(self) -> bool:
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale_value}


def _trainer(tmp_path, synth_data, grad_clip=None) -> PhaseTrainer:
    train = {"ema": {"warmups": 1}, "grad_clip": grad_clip, "cache_frozen": "off"}
    phases = {"phase1": {"epochs": 1, "lr": 1e-2, "augment": False}}
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data, phases=phases, train=train))
    train_index, val_index = load_coco(cfg.data.train.annotations), load_coco(cfg.data.val.annotations)
    torch.manual_seed(0)
    model = build_detector(cfg.model, list(train_index.class_names))
    model = add_fusion(model, cfg.fusion, random_text_embeddings(len(train_index.class_names), 16, 0))
    with torch.no_grad():
        for head in model.fusion_heads():
            head.gate.fill_(0.5)
    m = model.meta
    data = build_phase_data(cfg, train_index, val_index, InputSpec.of(m))
    trainer = PhaseTrainer(model, "phase1", cfg.phases["phase1"], cfg, data, tmp_path / "phase1", DistInfo(), False)
    assert trainer.steps_per_epoch == STEPS
    return trainer


def _optimizer_steps(trainer) -> int:
    return max(int(state["step"]) for state in trainer.optimizer.state.values())


@pytest.mark.parametrize("grad_clip", [None, 0.5])
def test_a_skipped_step_advances_neither_the_schedule_nor_the_ema(tmp_path, synth_data, grad_clip):
    """With the scaler skipping steps 1 and 4 of 6: 4 optimiser steps, and the scheduler, the EMA and
    the trainer's step count say 4 too. Before, the scheduler and the EMA took all 6 (this failed)."""
    trainer = _trainer(tmp_path, synth_data, grad_clip)
    trainer.scaler = scaler = SkippingScaler(skip={1, 4})
    trainer.train_epoch(0)
    assert scaler.stepped == [True, False, True, True, False, True]
    assert _optimizer_steps(trainer) == 4
    assert trainer.scheduler.last_epoch == 4 and trainer.ema.updates == 4
    assert (trainer.step, trainer.skipped_steps) == (4, 2)
    assert trainer.epoch_loss is not None and torch.isfinite(torch.tensor(trainer.epoch_loss))


def test_fp16_autocast_with_torchs_grad_scaler_skips_an_overflowing_step_and_trains_on(tmp_path, synth_data):
    """torch's GradScaler (on CPU, as on CUDA) under fp16 autocast: at a scale of 2**100 the first
    step's fp16 gradients overflow, the scaler skips it and backs off to 1; the other 5 steps train.
    The skip is read from the scale, as :func:`scaled_step` does on CUDA."""
    trainer = _trainer(tmp_path, synth_data)
    trainer.precision = Precision("fp16", "cpu")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100, backoff_factor=2.0**-100, growth_interval=1000)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train_epoch(0)
    assert trainer.scaler.get_scale() == 1.0
    assert (trainer.step, trainer.skipped_steps) == (STEPS - 1, 1)
    assert _optimizer_steps(trainer) == trainer.scheduler.last_epoch == trainer.ema.updates == STEPS - 1
    after = dict(trainer.model.named_parameters())
    assert all(torch.isfinite(after[n]).all() for n in before)
    assert any(not torch.equal(after[n], before[n]) for n in before)  # it trained
    assert torch.isfinite(torch.tensor(trainer.epoch_loss))


def test_scaled_step_says_whether_the_optimizer_stepped():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    assert scaled_step((weight * 2).sum(), torch.amp.GradScaler("cpu", enabled=False), optimizer, [weight])
    assert torch.equal(weight.detach(), torch.full((3,), 0.8))
    scaler = SkippingScaler(skip={0})
    assert not scaled_step((weight * 2).sum(), scaler, optimizer, [weight], grad_clip=1.0)
    assert torch.equal(weight.detach(), torch.full((3,), 0.8)) and scaler.get_scale() == 2.0**15
    optimizer.zero_grad()
    assert scaled_step((weight * 2).sum(), scaler, optimizer, [weight], grad_clip=1.0)
    assert weight.detach().lt(0.8).all()
