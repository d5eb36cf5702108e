"""One training phase: what it trains, what it keeps fixed."""

from __future__ import annotations

import pytest
import torch

from defectfusion.config import load_config
from defectfusion.data.coco import load_coco
from defectfusion.engine.training.distributed import DistInfo
from defectfusion.engine.training.phase_records import build_phase_data
from defectfusion.engine.training.trainer import PhaseTrainer
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.inference import InputSpec
from tests.helpers import write_train_config

CONSTANTS = ("model.decoder.up", "model.decoder.reg_scale")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("phase", ["baseline", "phase3"])
def test_the_decoder_constants_stay_fixed_and_outside_optimizer_and_ema(tmp_path, synth_data, phase):
    cfg = load_config(
        write_train_config(
            tmp_path / "cfg.yml", synth_data, phases={phase: {"epochs": 1, "lr": 1e-2}}, train={"ema": {"warmups": 1}}
        )
    )
    train, val = load_coco(cfg.data.train.annotations), load_coco(cfg.data.val.annotations)
    torch.manual_seed(0)
    model = build_detector(cfg.model, list(train.class_names))
    if cfg.phases[phase].fusion:
        model = add_fusion(model, cfg.fusion, random_text_embeddings(len(train.class_names), 16, 0))
    assert set(CONSTANTS) <= model.constant_parameters
    before = {name: model.get_parameter(name).detach().clone() for name in CONSTANTS}
    data = build_phase_data(cfg, train, val, InputSpec.of(model.meta))
    trainer = PhaseTrainer(model, phase, cfg.phases[phase], cfg, data, tmp_path / phase, DistInfo(), progress=False)

    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    for name in CONSTANTS:
        param = model.get_parameter(name)
        assert not param.requires_grad and id(param) not in in_optimizer, name
        assert name not in trainer.ema.names, name
    assert "decoder" in {g["name"].split("/")[0] for g in trainer.optimizer.param_groups}  # the decoder does train

    trainer.run()
    for name in CONSTANTS:
        assert torch.equal(model.get_parameter(name), before[name]), name
        assert torch.equal(trainer.ema.module.get_parameter(name), before[name]), name


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


@pytest.mark.parametrize("torn", [True, False])
def test_resume_after_a_kill_between_logging_and_saving_repeats_no_epoch(tmp_path, synth_data, monkeypatch, torn):
    from defectfusion.engine.training.progressive import run_training
    from defectfusion.io import read_jsonl

    cfg = load_config(
        write_train_config(tmp_path / "cfg.yml", synth_data, order=["baseline"], phases={"baseline": {"epochs": 2}})
    )
    saves = []
    original_save = PhaseTrainer._save_last

    def save_then_die(self):
        saves.append(self.epoch)
        if self.epoch == 1:  # epoch 1 is evaluated and logged, its state never saved
            raise _Killed
        original_save(self)

    monkeypatch.setattr(PhaseTrainer, "_save_last", save_then_die)
    with pytest.raises(_Killed):
        run_training(cfg, tmp_path / "run", progress=False)
    log = tmp_path / "run" / "baseline" / "metrics.jsonl"
    assert [r["epoch"] for r in read_jsonl(log)] == [0, 1]
    if torn:  # the kill hit the append itself
        text = log.read_text()
        log.write_text(text[: text.rindex("{") + 25])

    monkeypatch.setattr(PhaseTrainer, "_save_last", original_save)
    summary = run_training(cfg, tmp_path / "run", resume=True, progress=False)
    epochs = [r["epoch"] for r in read_jsonl(log)]
    assert epochs == [0, 1, 2]
    assert log.read_text().endswith("\n") and summary["phases"]["baseline"]["epochs_run"] == 2
    rows = (tmp_path / "run" / "baseline" / "results.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in rows[1:]] == ["0", "1", "2"]
