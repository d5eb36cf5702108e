"""Device discipline of validation, the file predictor, the loss and a training epoch, without a GPU.

The model runs on the pretend accelerator of ``tests/accelerator.py`` (real values on the CPU,
device ``meta``, CUDA's device rules applied to every operation) while the data loaders, the
evaluator and the matcher's assignment stay on the CPU, as in a CUDA run. Each test checks the
numbers equal the CPU run's: the code ran on the pretend device, nothing was skipped. The whole
DEIM loss is covered (the matcher moves its costs to the CPU for scipy and indexes the device
tensors with CPU indexes, which CUDA allows), with its backward pass.

What this cannot cover: autocast (``meta`` has none; bf16 on CPU is tested in
``test_precision.py``), the CUDA grad scaler (torch's own on CPU, and a stand-in, in
``test_amp_step.py``), NCCL, and the device rules of operations the meta kernels cannot run
(``nonzero``, ``item``, boolean masks): those are held to the plain rule only (no CPU tensor of one
or more dimensions beside a device one, except as an index or in a copy).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.data.coco import CocoDetection, load_coco
from defectfusion.data.transforms import DetectionCollator, build_eval_transform
from defectfusion.engine.evaluation.evaluator import DetectionEvaluator
from defectfusion.engine.evaluation.validation import run_validation
from defectfusion.engine.prediction.predictor import Predictor
from defectfusion.engine.training.loss import install_deim_loss
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.inference import InputSpec
from tests.accelerator import DEVICE, OnDevice, on_cpu, pretend_accelerator


@pytest.fixture(scope="module")
def model(synth_data):
    torch.manual_seed(0)
    names = list(load_coco(synth_data / "val" / "annotations.json").class_names)
    base = build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), names)
    fused = add_fusion(base, FusionConfig(query_selection=True), random_text_embeddings(len(names), 16, seed=1))
    with torch.no_grad():
        for head in fused.fusion_heads():
            head.gate.fill_(0.5)  # the text path computes
    return fused.eval()


def test_run_validation_with_the_model_on_the_accelerator_scores_what_the_cpu_scores(model, synth_data, one_thread):
    """``run_validation``: batches from a CPU loader, forward and post-processing on the device,
    detections back to the CPU evaluator."""
    index = load_coco(synth_data / "val" / "annotations.json")
    loader = DataLoader(
        CocoDetection(index, build_eval_transform(model.meta.image_size)),
        batch_size=3,
        collate_fn=DetectionCollator(model.meta.image_mean, model.meta.image_std),
    )
    expected = run_validation(model, loader, DetectionEvaluator(index.to_coco_dict()), torch.device("cpu"), top_k=50)
    on_device = copy.deepcopy(model)
    with pretend_accelerator() as mode:
        on_device.to(DEVICE)
        got = run_validation(on_device, loader, DetectionEvaluator(index.to_coco_dict()), DEVICE, top_k=50)
    assert mode.ran_on_meta > 1000
    assert got.num_detections == expected.num_detections == 8 * 50
    assert got.map50 == pytest.approx(expected.map50, abs=1e-6)
    assert got.confusion_matrix["counts"] == expected.confusion_matrix["counts"]


def test_the_file_predictor_on_the_accelerator_gives_the_cpu_detections(model, synth_data, one_thread):
    index = load_coco(synth_data / "val" / "annotations.json")
    paths, ids = [r.path for r in index.images], [r.id for r in index.images]
    expected = list(Predictor.from_model(copy.deepcopy(model), top_k=40, batch_size=3).predict_files(paths, ids))
    with pretend_accelerator():
        predictor = Predictor.from_model(copy.deepcopy(model), device=DEVICE, top_k=40, batch_size=3)
        assert next(predictor.model.parameters()).device == DEVICE
        got = list(predictor.predict_files(paths, ids))
    for g, e in zip(got, expected, strict=True):
        assert g.image_id == e.image_id and g.detections.boxes.device.type == "cpu"
        torch.testing.assert_close(g.detections.boxes, e.detections.boxes)
        torch.testing.assert_close(g.detections.scores, e.detections.scores)


def test_the_training_loss_and_its_gradients_on_the_accelerator_equal_the_cpu_ones(model, one_thread):
    """The DEIM loss (matching on the CPU with scipy, denoising groups, every auxiliary head, the
    box counts of ``_num_boxes``) and its backward pass, with the model and the labels on the device."""
    generator = torch.Generator().manual_seed(2)
    pixels = torch.rand(2, 3, 96, 96, generator=generator)
    labels = [
        {"class_labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.2], [0.25, 0.7, 0.1, 0.2]])},
        {"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.6, 0.4, 0.2, 0.5]])},
    ]

    def loss_and_grads(net, device):
        install_deim_loss(net)
        net.train()
        torch.manual_seed(3)  # the denoising queries are drawn at random
        out = net(pixel_values=pixels.to(device), labels=[{k: v.to(device) for k, v in t.items()} for t in labels])
        out.loss.backward()
        grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
        return out.loss, out.loss_dict, grads

    expected_loss, expected_terms, expected_grads = loss_and_grads(copy.deepcopy(model), "cpu")
    on_device = copy.deepcopy(model)
    with pretend_accelerator() as mode:
        on_device.to(DEVICE)
        loss, terms, grads = loss_and_grads(on_device, DEVICE)
        assert isinstance(loss, OnDevice) and all(g.device == DEVICE for g in grads.values())
        loss, terms, grads = on_cpu((loss, terms, grads))
    assert "aten._local_scalar_dense.default" in mode.cannot_run_on_meta  # the box counts' .item()
    assert any("dn" in k for k in terms) and set(terms) == set(expected_terms)
    torch.testing.assert_close(loss, expected_loss)
    assert grads.keys() == expected_grads.keys() and len(grads) > 50
    # the same operations, summed in another order where autograd reduces a broadcast (a scalar
    # bias's gradient cancels to ~1e-8): equal to round-off, gradients reach 150
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_a_training_epoch_and_its_evaluation_on_the_accelerator_match_the_cpu(tmp_path, synth_data, one_thread):
    """``PhaseTrainer`` (phase 3: encoder, decoder and heads train; EMA, gradient clipping, the schedule)
    with ``DistInfo(device=...)`` on the pretend device: an epoch of steps, then the validation and the
    best checkpoint it saves. Autocast is off (``meta`` has none)."""
    from defectfusion.config import load_config
    from defectfusion.engine.training.distributed import DistInfo
    from defectfusion.engine.training.phase_records import build_phase_data
    from defectfusion.engine.training.precision import Precision
    from defectfusion.engine.training.trainer import PhaseTrainer
    from defectfusion.models.checkpoint import load_detector
    from tests.helpers import write_train_config

    # a small lr: Adam moves a weight whose gradient cancels to ~1e-8 by up to lr per step, either way
    # as the round-off falls, so the two runs may part by 6 x lr per weight and no more
    phases = {"phase3": {"epochs": 1, "lr": 1e-5, "augment": False}}
    train = {"ema": {"warmups": 1}, "cache_frozen": "off"}
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data, phases=phases, train=train))
    train_index, val_index = load_coco(cfg.data.train.annotations), load_coco(cfg.data.val.annotations)
    torch.manual_seed(0)
    start = build_detector(cfg.model, list(train_index.class_names))
    start = add_fusion(start, cfg.fusion, random_text_embeddings(len(train_index.class_names), 16, 0))
    meta = start.meta
    data = build_phase_data(cfg, train_index, val_index, InputSpec.of(meta))

    def epoch(device, folder):
        trainer = PhaseTrainer(
            copy.deepcopy(start), "phase3", cfg.phases["phase3"], cfg, data, folder, DistInfo(device=device), False
        )
        trainer.precision = Precision("off", "cpu")
        torch.manual_seed(1)
        trainer.train_epoch(0)
        trainer.epoch = 1
        trainer._evaluate_and_decide()
        return trainer

    expected = epoch(torch.device("cpu"), tmp_path / "cpu")
    with pretend_accelerator() as mode:
        trainer = epoch(DEVICE, tmp_path / "device")
        assert next(trainer.model.parameters()).device == DEVICE
    assert mode.ran_on_meta > 10_000
    assert trainer.step == expected.step == 6 and trainer.best.epoch == 1
    assert trainer.epoch_loss == pytest.approx(expected.epoch_loss, rel=1e-4)
    assert trainer.best.map50 == pytest.approx(expected.best.map50, abs=1e-3)
    saved, reference = load_detector(tmp_path / "device" / "best"), load_detector(tmp_path / "cpu" / "best")
    for (name, value), other in zip(saved.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(value, other, rtol=0, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
