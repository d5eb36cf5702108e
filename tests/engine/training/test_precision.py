"""Mixed precision on CPU: bf16 autocast trains, keeps float32 weights, resumes exactly, and a fused
model at init still equals its baseline bit for bit."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from defectfusion.config import FusionConfig, ModelConfig, load_config
from defectfusion.data.coco import load_coco
from defectfusion.engine.training.precision import resolve_precision
from defectfusion.engine.training.progressive import run_training
from defectfusion.errors import ConfigError
from defectfusion.io import read_jsonl
from defectfusion.models.checkpoint import save_detector
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from tests.helpers import write_train_config


def test_modes_resolve_per_device_and_impossible_ones_are_refused():
    assert resolve_precision("auto", "cpu").mode == "off"
    bf16 = resolve_precision("bf16", "cpu")
    assert bf16.enabled and bf16.dtype == torch.bfloat16 and not bf16.needs_scaler
    assert not resolve_precision("off", "cpu").enabled
    with pytest.raises(ConfigError, match="train.amp: fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")


def test_old_boolean_configs_still_load(tmp_path, synth_data):
    on = load_config(write_train_config(tmp_path / "a.yml", synth_data, train={"amp": True}))
    off = load_config(write_train_config(tmp_path / "b.yml", synth_data, train={"amp": False}))
    assert (on.train.amp, off.train.amp) == ("auto", "off")
    with pytest.raises(ConfigError, match="amp"):
        load_config(write_train_config(tmp_path / "c.yml", synth_data, train={"amp": "fp8"}))


def test_a_fused_model_at_init_equals_its_baseline_exactly_under_bf16_autocast(six_classes):
    torch.manual_seed(0)
    base = build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), six_classes).eval()
    fused = add_fusion(base, FusionConfig(query_selection=True), random_text_embeddings(6, 16, seed=1)).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = base(pixel_values=x), fused(pixel_values=x)
    assert a.logits.dtype == b.logits.dtype
    assert (a.logits.float() - b.logits.float()).abs().max().item() == 0.0
    assert (a.pred_boxes.float() - b.pred_boxes.float()).abs().max().item() == 0.0
    # the text term itself is computed in float32 inside autocast
    head = next(fused.fusion_heads())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head.text_logits(torch.randn(3, head.proj.in_features)).dtype == torch.float32


def test_bf16_training_is_finite_saves_float32_and_resumes_exactly(tmp_path, synth_data):
    torch.manual_seed(0)
    names = list(load_coco(synth_data / "train" / "annotations.json").class_names)
    save_detector(build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), names), tmp_path / "start")
    cfg = load_config(
        write_train_config(
            tmp_path / "cfg.yml",
            synth_data,
            order=["phase1", "phase2"],
            model={"checkpoint": str(tmp_path / "start")},
            train={"amp": "bf16"},
        )
    )
    summary = run_training(cfg, tmp_path / "whole", progress=False)
    for phase in ("phase1", "phase2"):
        records = read_jsonl(tmp_path / "whole" / phase / "metrics.jsonl")
        losses = [r["train_loss"] for r in records if r["train_loss"] is not None]
        assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
        for name in ("best/model.safetensors", "last/raw.safetensors"):
            weights = load_file(str(tmp_path / "whole" / phase / name))
            floats = {k: v.dtype for k, v in weights.items() if v.is_floating_point()}
            assert set(floats.values()) == {torch.float32}, f"{phase}/{name}"
    # phase 1 starts at the baseline: its gate-0 evaluation scores exactly what the checkpoint scored
    first = read_jsonl(tmp_path / "whole" / "phase1" / "metrics.jsonl")[0]
    assert (
        first["epoch"] == 0 and first["map50"] == summary["start"]["map50"] and first["map"] == summary["start"]["map"]
    )

    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "phase2")
    run_training(cfg, tmp_path / "resumed", resume=True, progress=False)
    for name in ("last/raw.safetensors", "best/model.safetensors"):
        whole = load_file(str(tmp_path / "whole" / "phase2" / name))
        resumed = load_file(str(tmp_path / "resumed" / "phase2" / name))
        assert not [k for k in whole if not torch.equal(whole[k], resumed[k])], name


@pytest.mark.parametrize(
    ("capability", "auto"),
    [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16"), ((12, 0), "bf16")],
)
def test_auto_picks_bf16_only_where_the_gpu_has_it_natively(monkeypatch, capability, auto):
    """By compute capability: bf16 from Ampere (8.0) on, fp16 with the grad scaler below (V100 7.0,
    T4 7.5). ``torch.cuda.is_bf16_supported()`` answers True on a V100 (it counts emulation): with
    it in charge, as before, ``auto`` picked emulated bf16 there and this test failed for 7.x."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.version, "hip", None)
    chosen = resolve_precision("auto", "cuda")
    assert (chosen.mode, chosen.device_type, chosen.needs_scaler) == (auto, "cuda", auto == "fp16")
    assert chosen.dtype == (torch.float16 if auto == "fp16" else torch.bfloat16)
    assert resolve_precision("fp16", "cuda:0").needs_scaler
    if auto == "fp16":
        major, minor = capability
        with pytest.raises(ConfigError, match=rf"bf16 is not native on cuda:0 \(compute capability {major}\.{minor};"):
            resolve_precision("bf16", "cuda:0")
    else:
        assert resolve_precision("bf16", "cuda:0").mode == "bf16"
