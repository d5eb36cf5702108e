"""The frozen-trunk cache: a phase that reuses its trunk's output trains exactly as one that recomputes it."""

from __future__ import annotations

import copy
import json
import shutil
from collections import namedtuple

import pytest
import torch

from defectfusion.config import load_config
from defectfusion.data.coco import load_coco
from defectfusion.engine import trunk_cache
from defectfusion.engine.distributed import DistInfo
from defectfusion.engine.phase_records import build_phase_data
from defectfusion.engine.trainer import PhaseTrainer
from defectfusion.engine.validation import batch_inputs
from defectfusion.errors import ConfigError
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from tests.helpers import write_train_config

pytestmark = pytest.mark.usefixtures("one_thread")

PHASES = {"phase1": ["fusion"], "phase2": ["fusion", "class_head"]}


def _config(tmp_path, synth_data, mode: str, name: str = "phase1", **phase):
    phases = {name: {"epochs": 2, "lr": 1e-2, "augment": False, **phase}}
    train = {"cache_frozen": mode, "cache_dir": str(tmp_path / "cache"), "ema": {"warmups": 1}, "grad_clip": None}
    return load_config(write_train_config(tmp_path / f"{name}-{mode}.yml", synth_data, phases=phases, train=train))


@pytest.fixture(scope="module")
def start_model(synth_data):
    """A fused detector whose gates are open, so the fusion heads compute and learn from the first step."""
    train = load_coco(synth_data / "train" / "annotations.json")
    cfg = load_config(write_train_config(synth_data.parent / "start.yml", synth_data))
    torch.manual_seed(0)
    model = build_detector(cfg.model, list(train.class_names))
    model = add_fusion(model, cfg.fusion, random_text_embeddings(len(train.class_names), 16, 0))
    with torch.no_grad():
        for head in model.fusion_heads():
            head.gate.fill_(0.5)
    return model


def _trainer(cfg, model, name, folder):
    train, val = load_coco(cfg.data.train.annotations), load_coco(cfg.data.val.annotations)
    data = build_phase_data(cfg, train, val, model.meta.image_size, model.meta.image_mean, model.meta.image_std)
    return PhaseTrainer(copy.deepcopy(model), name, cfg.phases[name], cfg, data, folder, DistInfo(), progress=False)


def _grads(trainer, batch, seed: int):
    trainer.net.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same denoising noise
    loss = trainer.net(**batch_inputs(batch, trainer.device), labels=batch["labels"]).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", list(PHASES))
def test_steps_from_cached_maps_give_the_loss_gradients_and_weights_of_steps_from_pixels(
    tmp_path, synth_data, start_model, name
):
    trainers = {}
    for mode in ("off", "on"):
        cfg = _config(tmp_path, synth_data, mode, name, trainable=PHASES[name])
        trainers[mode] = _trainer(cfg, start_model, name, tmp_path / mode / name)
        trainers[mode].prepare_cache()
    plain, cached = trainers["off"], trainers["on"]
    assert plain.cache is None and cached.cache is not None and cached.cache.computed == 24 + 8
    assert cached.cache.val_loader is not None

    for seed, (a, b) in enumerate(zip(plain._train_loader(0), cached._train_loader(0), strict=True)):
        assert "pixel_values" in a and "trunk_features" in b and torch.equal(a["image_ids"], b["image_ids"])
        for ta, tb in zip(a["labels"], b["labels"], strict=True):
            assert torch.equal(ta["class_labels"], tb["class_labels"])
            torch.testing.assert_close(ta["boxes"], tb["boxes"])
        loss_a, grads_a = _grads(plain, a, seed)
        loss_b, grads_b = _grads(cached, b, seed)
        assert loss_a == pytest.approx(loss_b, rel=1e-5)
        assert set(grads_a) == set(grads_b) and grads_a
        assert any(g.abs().sum() > 0 for g in grads_a.values())
        for param, grad in grads_a.items():
            torch.testing.assert_close(grads_b[param], grad, rtol=1e-4, atol=1e-6, msg=param)

    # whole phases, seeded alike: the same weights, the same validation scores
    results = {}
    for mode in ("off", "on"):
        cfg = _config(tmp_path, synth_data, mode, name, trainable=PHASES[name])
        torch.manual_seed(7)
        trainer = _trainer(cfg, start_model, name, tmp_path / f"run-{mode}" / name)
        results[mode] = trainer.run(), trainer.model.state_dict(), trainer.step
    (off, weights_off, steps_off), (on, weights_on, steps_on) = results["off"], results["on"]
    assert steps_off == steps_on == 2 * 6
    changed = [k for k in weights_off if not torch.equal(weights_off[k], start_model.state_dict()[k])]
    assert changed  # training moved the weights
    for key in weights_off:
        torch.testing.assert_close(weights_on[key], weights_off[key], rtol=1e-4, atol=1e-5, msg=key)
    assert on.best_map50 == pytest.approx(off.best_map50, abs=1e-3)
    assert on.frozen_trunk.startswith(f"{name}: frozen trunk cached (backbone and encoder frozen")
    assert off.frozen_trunk == f"{name}: trunk computed every step (train.cache_frozen is off)"


def test_a_second_phase_on_the_same_trunk_finds_every_image_and_a_changed_one_is_recomputed(
    tmp_path, synth_data, start_model
):
    cfg = _config(tmp_path, synth_data, "on")
    first = _trainer(cfg, start_model, "phase1", tmp_path / "a")
    first.prepare_cache()
    assert first.cache.computed == 32
    again = _trainer(cfg, start_model, "phase1", tmp_path / "b")  # a resumed phase, phase 2 after phase 1
    again.prepare_cache()
    assert again.cache.computed == 0 and again.cache.store.folder == first.cache.store.folder
    assert "all found" in again.cache.describe()

    # other weights: another store; another image file: only it is computed
    moved = copy.deepcopy(start_model)
    with torch.no_grad():
        next(moved.model.encoder.parameters()).add_(0.1)
    other = _trainer(cfg, moved, "phase1", tmp_path / "c")
    other.prepare_cache()
    assert other.cache.store.folder != first.cache.store.folder and other.cache.computed == 32

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    image = load_coco(data / "train" / "annotations.json").images[0].path
    from PIL import Image

    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)
    (tmp_path / "edited").mkdir()
    cfg = _config(tmp_path / "edited", data, "on")
    cfg.train.cache_dir = str(tmp_path / "cache")
    edited = _trainer(cfg, start_model, "phase1", tmp_path / "d")
    edited.prepare_cache()
    assert edited.cache.computed == 1


def test_auto_caches_only_where_it_holds_and_on_names_what_stops_it(tmp_path, synth_data, start_model, capsys):
    flipping = _config(tmp_path, synth_data, "auto", augment=True)  # the test data flips with p 0.5
    trainer = _trainer(flipping, start_model, "phase1", tmp_path / "flip")
    assert not trainer.cache_decision.use and "flip_prob 0.5" in trainer.cache_decision.reason
    trainer.progress = True
    trainer.prepare_cache()
    captured = capsys.readouterr()
    line = captured.out + captured.err
    assert "phase1: trunk computed every step" in line and "augment: false" in line

    with pytest.raises(ConfigError, match="phase 'phase1' cannot reuse a frozen trunk: its augmentation is random"):
        _trainer(_config(tmp_path, synth_data, "on", augment=True), start_model, "phase1", tmp_path / "x")
    full = _config(tmp_path, synth_data, "on", "phase3", trainable=["fusion", "encoder"])
    with pytest.raises(ConfigError, match="it trains the encoder") as error:
        trunk_cache.check_cache_setting(full, ["phase3"])
    assert "cache_frozen: auto" in str(error.value)

    random_trunk = copy.deepcopy(start_model)
    random_trunk.model.encoder.input_dropout = torch.nn.Dropout(0.1)  # a trunk that is random in training
    trainer = _trainer(_config(tmp_path, synth_data, "auto"), random_trunk, "phase1", tmp_path / "drop")
    assert not trainer.cache_decision.use and "input_dropout has p=0.1" in trainer.cache_decision.reason


def test_a_disk_without_room_is_named_before_anything_is_written(tmp_path, synth_data, start_model, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(trunk_cache.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10**6))
    with pytest.raises(ConfigError, match=r"needs ~.* GB \(32 images x .* MB\).*only 0.0 GB is free.*train.cache_dir"):
        trainer = _trainer(_config(tmp_path, synth_data, "on"), start_model, "phase1", tmp_path / "on")
        trainer.prepare_cache()
    trainer = _trainer(_config(tmp_path, synth_data, "auto"), start_model, "phase1", tmp_path / "auto")
    trainer.prepare_cache()  # auto: says so and trains from pixels
    assert trainer.cache is None and "GB is free" in trainer.cache_line
    assert trainer.cache_line.startswith("phase1: trunk computed every step (the frozen-trunk cache needs")
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    key = next((tmp_path / "cache" / "trunk").glob("*/key.json"))
    assert json.loads(key.read_text())["image_size"] == list(start_model.meta.image_size)


def test_a_bare_on_or_off_in_yaml_means_the_mode():
    assert load_config(None, ["train.cache_frozen=off"]).train.cache_frozen == "off"
    assert load_config(None, ["train.cache_frozen=on"]).train.cache_frozen == "on"
    assert load_config(None).train.cache_frozen == "auto"
