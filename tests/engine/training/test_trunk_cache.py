"""The frozen-trunk cache: a phase that reuses its trunk's output trains exactly as one that recomputes it."""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections import Counter, namedtuple

import pytest
import torch
from safetensors.torch import load_file

from defectfusion.config import load_config
from defectfusion.data.coco import load_coco
from defectfusion.data.feature_store import file_digest
from defectfusion.engine.evaluation.validation import batch_inputs, run_validation
from defectfusion.engine.training import trunk_cache
from defectfusion.engine.training.distributed import DistInfo
from defectfusion.engine.training.phase_records import build_phase_data
from defectfusion.engine.training.trainer import PhaseTrainer
from defectfusion.errors import ConfigError
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.inference import InputSpec
from defectfusion.models.trunk import trunk_fingerprint
from tests.helpers import calibrate, write_train_config

pytestmark = pytest.mark.usefixtures("one_thread")

PHASES = {"phase1": ["fusion"], "phase2": ["fusion", "class_head"]}


def _config(tmp_path, synth_data, mode: str, name: str = "phase1", **phase):
    phases = {name: {"epochs": 2, "lr": 1e-2, "augment": False, **phase}}
    train = {"cache_frozen": mode, "cache_dir": str(tmp_path / "cache"), "ema": {"warmups": 1}, "grad_clip": None}
    return load_config(write_train_config(tmp_path / f"{name}-{mode}.yml", synth_data, phases=phases, train=train))


@pytest.fixture(scope="module")
def start_model(synth_data):
    """A fused detector whose gates are open, so the fusion heads compute and learn from the first step, and whose
    trunk's batch norms are calibrated: at initialisation its output is ~1e-19, the same for every image."""
    train = load_coco(synth_data / "train" / "annotations.json")
    cfg = load_config(write_train_config(synth_data.parent / "start.yml", synth_data))
    torch.manual_seed(0)
    model = calibrate(build_detector(cfg.model, list(train.class_names)))
    model = add_fusion(model, cfg.fusion, random_text_embeddings(len(train.class_names), 16, 0))
    with torch.no_grad():
        for head in model.fusion_heads():
            head.gate.fill_(0.5)
    return model


def _trainer(cfg, model, name, folder):
    train, val = load_coco(cfg.data.train.annotations), load_coco(cfg.data.val.annotations)
    data = build_phase_data(cfg, train, val, InputSpec.of(model.meta))
    return PhaseTrainer(copy.deepcopy(model), name, cfg.phases[name], cfg, data, folder, DistInfo(), progress=False)


class _Recorder:
    """An evaluator that keeps the detections :func:`run_validation` hands it, by image id."""

    def reset(self):
        self.detections = {}

    def process(self, image_ids, detections):
        self.detections.update(zip(image_ids, detections, strict=True))

    def evaluate(self):
        return {}


def _detections(model, loader, trainer) -> dict:
    recorder = _Recorder()
    run_validation(model, loader, recorder, trainer.device, top_k=trainer.cfg.train.top_k)
    return recorder.detections


def _assert_same_detections(found: dict, expected: dict, top: int = 20) -> None:
    """Each image's best ``top`` detections found again: the same label with a score within 1e-5 and a box within
    1e-3 px (matched by value, so that two near-equal scores may trade places), and the same sorted scores."""
    assert found.keys() == expected.keys() and len(found) == 8
    for image_id, want in expected.items():
        got = found[image_id]
        assert len(got) == len(want) >= top
        torch.testing.assert_close(got.scores[:top], want.scores[:top], rtol=0, atol=1e-5, msg=str(image_id))
        for label, score, box in zip(want.labels[:top], want.scores[:top], want.boxes[:top], strict=True):
            same = (
                (got.labels == label)
                & ((got.scores - score).abs() <= 1e-5)
                & ((got.boxes - box).abs().amax(dim=1) <= 1e-3)
            )
            assert same.any(), f"image {image_id}: no detection of class {int(label)}, score {float(score):.5f}, {box}"


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

    # whole phases, seeded alike: the same weights, the same validation detections
    results = {}
    for mode in ("off", "on"):
        cfg = _config(tmp_path, synth_data, mode, name, trainable=PHASES[name])
        torch.manual_seed(7)
        trainer = _trainer(cfg, start_model, name, tmp_path / f"run-{mode}" / name)
        results[mode] = trainer.run(), trainer.model.state_dict(), trainer
    (off, weights_off, plain), (on, weights_on, cached) = results["off"], results["on"]
    assert plain.step == cached.step == 2 * 6
    changed = [k for k in weights_off if not torch.equal(weights_off[k], start_model.state_dict()[k])]
    assert changed  # training moved the weights
    for key in weights_off:
        torch.testing.assert_close(weights_on[key], weights_off[key], rtol=1e-4, atol=1e-5, msg=key)
    assert on.frozen_trunk.startswith(f"{name}: frozen trunk cached (backbone and encoder frozen")
    assert off.frozen_trunk == f"{name}: trunk computed every step (train.cache_frozen is off)"

    model = cached._eval_model()
    from_pixels = _detections(model, cached.data.val_loader, cached)
    from_cache = _detections(model, cached.cache.val_loader, cached)
    _assert_same_detections(from_cache, from_pixels)  # one model: the cached maps are the pixels' maps
    _assert_same_detections(from_cache, _detections(plain._eval_model(), plain.data.val_loader, plain))
    # the control: each image served another image's stored maps gives detections the comparison tells apart
    dataset = cached.cache.val_loader.batches.dataset
    dataset.digests = dataset.digests[1:] + dataset.digests[:1]
    with pytest.raises(AssertionError):
        _assert_same_detections(_detections(model, cached.cache.val_loader, cached), from_pixels)


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


# ---------------------------------------------------------------------------- a damaged cache costs nothing


def _cache_file(trainer, index, position: int):
    return trainer.cache.store.path(file_digest(index.images[position].path))


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero_eight_bytes(path) -> None:
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # the tensors' data follows the header
    at = start + (len(raw) - start) // 2
    assert any(raw[at : at + 8])
    raw[at : at + 8] = bytes(8)
    path.write_bytes(bytes(raw))


def test_a_phase_run_again_on_a_cache_with_a_truncated_file_completes_and_says_it_recomputed_one(
    tmp_path, synth_data, start_model
):
    cfg = _config(tmp_path, synth_data, "auto")
    torch.manual_seed(7)
    first = _trainer(cfg, start_model, "phase1", tmp_path / "first" / "phase1")
    first.run()
    path = _cache_file(first, first.data.train_index, 3)
    sound = {name: t.clone() for name, t in load_file(str(path)).items()}  # load_file maps the file: copy
    _truncate(path)

    torch.manual_seed(7)
    second = _trainer(cfg, start_model, "phase1", tmp_path / "second" / "phase1")
    with pytest.warns(trunk_cache.CacheRepairWarning) as warned:
        outcome = second.run()
    said = [str(w.message) for w in warned if w.category is trunk_cache.CacheRepairWarning]
    assert len(said) == 1 and re.fullmatch(
        rf"phase1: frozen-trunk cache file {re.escape(str(path))} is truncated \(\d+ of its \d+ bytes\): recomputed",
        said[0],
    )
    assert outcome.epochs_run == 2 and outcome.frozen_trunk.endswith(", 1 recomputed (1 truncated)")
    assert json.loads((second.folder / "result.json").read_text())["frozen_trunk"] == outcome.frozen_trunk
    assert second.cache.computed == 0 and second.cache.store.folder == first.cache.store.folder
    # the file is whole again, with the maps it held (computed alone now, in a batch of 4 then: rounding apart)
    for name, tensor in sound.items():
        torch.testing.assert_close(load_file(str(path))[name], tensor, rtol=1e-4, atol=1e-4)
    for key, value in first.model.state_dict().items():  # and the phase trained as the first one did
        torch.testing.assert_close(second.model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("workers", [0, 2])
def test_files_lost_or_changed_after_the_fill_are_recomputed_where_the_batches_are_read(
    tmp_path, synth_data, start_model, workers
):
    cfg = _config(tmp_path, synth_data, "on")
    cfg.data.num_workers = workers
    trainer = _trainer(cfg, start_model, "phase1", tmp_path / "run" / "phase1")
    trainer.prepare_cache()
    before = list(trainer._train_loader(0)), list(trainer.cache.val_loader)
    data = trainer.data
    damaged = [_cache_file(trainer, data.train_index, 0), _cache_file(trainer, data.val_index, 5)]
    for path in damaged:
        path.unlink()
    changed = _cache_file(trainer, data.train_index, 9)
    _zero_eight_bytes(changed)

    with pytest.warns(trunk_cache.CacheRepairWarning) as warned:
        after = list(trainer._train_loader(0)), list(trainer.cache.val_loader)
    said = sorted(str(w.message) for w in warned if w.category is trunk_cache.CacheRepairWarning)
    corrupt = "holds tensors that fail their SHA-256 (the file changed on disk)"
    expected = [f"phase1: frozen-trunk cache file {p} is missing: recomputed" for p in damaged]
    assert said == sorted([*expected, f"phase1: frozen-trunk cache file {changed} {corrupt}: recomputed"])
    assert trainer.cache.repairs == Counter(missing=2, corrupt=1)
    assert trainer.cache.describe().endswith("32 computed now, 3 recomputed (1 corrupt, 2 missing)")
    for loaded, reference in zip(after, before, strict=True):  # the batches of a sound cache, rounding apart
        assert len(loaded) == len(reference)
        for a, b in zip(loaded, reference, strict=True):
            assert torch.equal(a["image_ids"], b["image_ids"])
            for level_a, level_b in zip(a["trunk_features"], b["trunk_features"], strict=True):
                torch.testing.assert_close(level_a, level_b, rtol=1e-4, atol=1e-4)
    for path in [*damaged, changed]:
        assert trainer.cache.store.check(path.stem) is None and trainer.cache.store.read(path.stem)


def test_files_deleted_or_changed_between_epochs_cost_their_recomputation_and_nothing_else(
    tmp_path, synth_data, start_model
):
    cfg = _config(tmp_path, synth_data, "auto")
    torch.manual_seed(7)
    undisturbed = _trainer(cfg, start_model, "phase1", tmp_path / "undisturbed" / "phase1")
    undisturbed.run()

    torch.manual_seed(7)
    trainer = _trainer(cfg, start_model, "phase1", tmp_path / "disturbed" / "phase1")
    data = trainer.data

    def disturb(record):  # after each evaluation: the next epoch and the next validation read these
        if record["epoch"] == 0:
            _cache_file(trainer, data.train_index, 2).unlink()
            _cache_file(trainer, data.val_index, 1).unlink()
        elif record["epoch"] == 1:
            _zero_eight_bytes(_cache_file(trainer, data.train_index, 7))
            _truncate(_cache_file(trainer, data.val_index, 6))

    trainer.on_evaluation = disturb
    with pytest.warns(trunk_cache.CacheRepairWarning):
        outcome = trainer.run()
    assert outcome.epochs_run == 2 and len(trainer.records) == len(undisturbed.records) == 3
    assert trainer.cache.repairs == Counter(missing=2, corrupt=1, truncated=1)  # two validations read their files
    for key, value in undisturbed.model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_the_store_key_names_the_format_and_the_library_versions(tmp_path, synth_data, start_model, monkeypatch):
    import transformers

    cfg = _config(tmp_path, synth_data, "on")
    trainer = _trainer(cfg, start_model, "phase1", tmp_path / "run" / "phase1")

    def store():
        fingerprint = trunk_fingerprint(trainer.model)
        return trunk_cache.store_for(cfg, trainer.model, fingerprint, trainer.precision, trainer.device, tmp_path)

    first = store()
    described = json.loads((first.folder / "key.json").read_text())
    assert described["format"] == trunk_cache.FORMAT == 2
    assert (described["torch"], described["transformers"]) == (torch.__version__, transformers.__version__)
    folders = {first.folder}
    for module, name, value in (
        (transformers, "__version__", "99.0"),
        (torch, "__version__", "9.9"),
        (trunk_cache, "FORMAT", 3),
    ):
        with monkeypatch.context() as patch:
            patch.setattr(module, name, value)
            folders.add(store().folder)
    assert len(folders) == 4  # an upgrade starts a new folder
