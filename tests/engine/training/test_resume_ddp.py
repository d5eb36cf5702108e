"""A killed run resumes where it stopped; a 2-process DDP run completes. Both run real subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import write_train_config

pytestmark = pytest.mark.slow


def _cmd(*args):
    return [sys.executable, "-m", "defectfusion", "train", *map(str, args), "--quiet"]


def _records(path: Path):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, synth_data):
    cfg = write_train_config(
        tmp_path / "cfg.yml", synth_data, order=["baseline"], data={"batch_size": 2}, phases={"baseline": {"epochs": 4}}
    )
    subprocess.run(_cmd(cfg, "--out", tmp_path / "reference"), check=True, env=_env(), timeout=600)

    run = tmp_path / "run"
    state = run / "baseline" / "last" / "trainer.json"
    process = subprocess.Popen(
        _cmd(cfg, "--out", run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    saves: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if state.is_file():
                try:
                    epoch = json.loads(state.read_text())["epoch"]
                except (json.JSONDecodeError, KeyError):
                    epoch = None
                if epoch is not None:
                    saves.setdefault(epoch, time.monotonic())
                if 2 in saves:
                    # half an epoch into epoch 3, measured from how long epoch 2 took
                    time.sleep(0.5 * (saves[2] - saves.get(1, saves[2] - 1.0)))
                    break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    stopped_after = json.loads(state.read_text())["epoch"]
    assert 2 <= stopped_after < 4  # killed inside a later epoch, before the run could finish

    subprocess.run(_cmd("--resume", "--out", run), check=True, env=_env(), timeout=600)
    assert _records(run / "baseline" / "metrics.jsonl") == _records(
        tmp_path / "reference" / "baseline" / "metrics.jsonl"
    )
    resumed = load_file(str(run / "baseline" / "last" / "raw.safetensors"))
    reference = load_file(str(tmp_path / "reference" / "baseline" / "last" / "raw.safetensors"))
    assert all((resumed[k] == reference[k]).all() for k in reference)


def test_two_process_cpu_ddp_run_writes_one_run_folder(tmp_path, synth_data):
    # phase 1 reuses its frozen trunk: the processes fill the cache half each, then read all of it
    cfg = write_train_config(
        tmp_path / "cfg.yml",
        synth_data,
        order=["baseline", "phase1"],
        phases={"phase1": {"augment": False}},
    )
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "defectfusion",
            "train",
            str(cfg),
            "--out",
            str(out),
            "--quiet",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["phases"]) == ["baseline", "phase1"] and summary["final"]
    records = _records(out / "phase1" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]  # written once, by the main process only
    # each process trained on half of every epoch: 24 images / 2 processes / batch 4 = 3 steps
    assert records[-1]["step"] == 3
    assert len(list((out / "cache" / "trunk").glob("*/*.safetensors"))) == 24 + 8


def test_the_process_group_gets_the_configured_timeout(monkeypatch):
    import datetime

    import torch.distributed as dist

    from defectfusion.config import load_config
    from defectfusion.engine.training import distributed

    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    cfg = load_config(None, ["train.dist_timeout_minutes=90"])
    info = distributed.init_distributed("cpu", cfg.train.dist_timeout_minutes)
    assert info.world_size == 2 and info.rank == 1
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(minutes=90)}
    assert load_config(None).train.dist_timeout_minutes == 120  # generous by default
