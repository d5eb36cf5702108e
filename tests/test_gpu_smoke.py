"""benchmarks/gpu_smoke.py: without CUDA it says so and exits 0; on CPU its every code path runs; its
JSON is written section by section, so a failing or crashing section loses nothing measured before it."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would measure it")
def test_without_cuda_it_says_so_and_exits_0(tmp_path, capsys):
    assert _script().main(["--out", str(tmp_path / "g.json")]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert json.loads((tmp_path / "g.json").read_text()) == {"cuda": False}


CPU = ["--device", "cpu", "--preset", "hgnetv2_micro", "--size", "96", "--batch", "2", "--steps", "1"]
SINGLE_DEVICE = [
    "train_full_bf16",
    "train_phase1_bf16",
    "validation_images_per_s",
    "latency_off",
    "latency_bf16",
    "onnx",
]


def test_on_cpu_every_path_runs_and_the_table_is_written(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert _script().main([*CPU, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("train_full_bf16", "train_phase1_bf16"):
        assert result[key]["nonfinite"] == result[key]["scaler_skipped"] == 0 and result[key]["steps_per_s"] > 0
    assert result["validation_images_per_s"] > 0 and math.isfinite(result["latency_bf16"]["ratio"])
    assert 0.0 <= result["onnx"]["fp16_label_agreement"] <= 1.0 and "skipped" in result["onnx"]["onnx_cuda"]
    assert result["ddp"] == "skipped: fewer than two GPUs"
    assert result["finished"] is True and result["failed"] == []
    printed = capsys.readouterr().out
    assert "wrote" in printed and "validation_images_per_s" in printed  # each section printed as it came


def test_a_section_that_raises_is_recorded_and_the_others_are_kept_and_run(tmp_path, monkeypatch):
    """The bf16 latency section raises: the sections before it keep their numbers, the error is its
    entry, the ONNX section after it still runs, and the script exits 1."""
    script = _script()
    measured = script.latency_ratio

    def latency_ratio(model, size, device, iters, amp):
        if amp == "bf16":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return measured(model, size, device, iters, amp)

    monkeypatch.setattr(script, "latency_ratio", latency_ratio)
    out = tmp_path / "g.json"
    assert script.main([*CPU, "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    assert result["latency_bf16"] == {"error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert result["train_full_bf16"]["steps_per_s"] > 0 and result["latency_off"]["ratio"] > 0
    assert "fp16_export" in result["onnx"]
    assert result["finished"] is True and result["failed"] == ["latency_bf16"]


def test_a_crash_keeps_every_section_measured_before_it(tmp_path, monkeypatch):
    """A crash the script cannot catch (a kill, here a KeyboardInterrupt in the ONNX section): the
    JSON on disk already holds every earlier section, and says the run did not finish. Before, the
    JSON was written only at the end, and nothing was left (this failed)."""
    script = _script()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "onnx_checks", killed)
    out = tmp_path / "g.json"
    with pytest.raises(KeyboardInterrupt):
        script.main([*CPU, "--out", str(out)])
    result = json.loads(out.read_text())
    assert [k for k in SINGLE_DEVICE if k in result] == SINGLE_DEVICE[:-1]
    assert result["train_phase1_bf16"]["steps_per_s"] > 0 and result["validation_images_per_s"] > 0
    assert result["finished"] is False and result["seconds"] > 0


@pytest.mark.slow
def test_the_two_process_sections_run_on_cpu(tmp_path, monkeypatch):
    """``--ddp on``: the bare DDP steps and a one-epoch ``torchrun -m defectfusion train`` of phase 1
    with ``train.cache_frozen: on``, on the CPU with gloo (the single-device sections are stubbed)."""
    script = _script()
    monkeypatch.setattr(script, "single_device", lambda args, device, sections: None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "g.json"
    assert script.main([*CPU, "--ddp", "on", "--out", str(out)]) == 0, json.loads(out.read_text())
    result = json.loads(out.read_text())
    assert result["ddp"]["processes"] == 2 and result["ddp"]["steps_per_s"] > 0
    train = result["ddp_train"]
    # 8 training images, 2 processes, batches of 2: 2 steps each; the trunk's maps of all 12 images cached
    assert train["processes"] == 2 and train["epochs_run"] == 1 and train["steps_per_process"] == 2
    assert "frozen trunk cached" in train["frozen_trunk"] and "12 images" in train["frozen_trunk"]
