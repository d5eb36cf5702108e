"""One training phase: what it trains, what it keeps fixed."""

from __future__ import annotations

import pytest
import torch

from defectfusion.config import load_config
from defectfusion.data.coco import load_coco
from defectfusion.engine.distributed import DistInfo
from defectfusion.engine.trainer import PhaseTrainer, build_phase_data
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from tests.conftest import write_train_config

CONSTANTS = ("model.decoder.up", "model.decoder.reg_scale")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("phase", ["baseline", "phase3"])
def test_the_decoder_constants_stay_fixed_and_outside_optimizer_and_ema(tmp_path, synth_data, phase):
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data,
                                         phases={phase: {"epochs": 1, "lr": 1e-2}}, train={"ema": {"warmups": 1}}))
    train, val = load_coco(cfg.data.train.annotations), load_coco(cfg.data.val.annotations)
    torch.manual_seed(0)
    model = build_detector(cfg.model, list(train.class_names))
    if cfg.phases[phase].fusion:
        model = add_fusion(model, cfg.fusion, random_text_embeddings(len(train.class_names), 16, 0))
    assert set(CONSTANTS) <= model.constant_parameters
    before = {name: model.get_parameter(name).detach().clone() for name in CONSTANTS}
    data = build_phase_data(cfg, train, val, model.meta.image_size, model.meta.image_mean, model.meta.image_std)
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
