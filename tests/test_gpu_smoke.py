"""benchmarks/gpu_smoke.py: without CUDA it says so and exits 0; on CPU its every code path runs."""

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


def test_on_cpu_every_path_runs_and_the_table_is_written(tmp_path, capsys):
    out = tmp_path / "g.json"
    argv = ["--device", "cpu", "--preset", "hgnetv2_micro", "--size", "96", "--batch", "2", "--steps", "1"]
    assert _script().main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("train_full_bf16", "train_phase1_bf16"):
        assert result[key]["nonfinite"] == 0 and result[key]["steps_per_s"] > 0
    assert result["validation_images_per_s"] > 0 and math.isfinite(result["latency_bf16"]["ratio"])
    assert 0.0 <= result["fp16_label_agreement"] <= 1.0 and "skipped" in result["onnx_cuda"]
    assert "wrote" in capsys.readouterr().out
