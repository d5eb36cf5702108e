"""The local launcher: failures printed when they happen, threads as the config sets them (no training here)."""

from __future__ import annotations

import sys
import time

import pytest

from defectfusion.commands import study_launch
from defectfusion.commands.study_launch import StudyError, last_error_line, run_local, split_threads
from defectfusion.commands.study_plan import StudyRun
from tests.helpers import write_train_config


def _runs(tmp_path, synth_data, keys, **sections):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_train_config(tmp_path / "cfg.yml", synth_data, **sections)
    return [StudyRun(arm, 1.0, seed, str(config), str(tmp_path / "runs" / f"{arm}{seed}")) for arm, seed in keys]


def test_a_failed_run_is_printed_when_it_fails_and_the_others_go_on(tmp_path, synth_data, monkeypatch):
    release = tmp_path / "release"
    scripts = {
        # fails at once, its log ending as `defectfusion train` does
        "bad/100pct/seed0": "import sys; print('loading'); print('Traceback ...'); print('ValueError: inner');"
        " print('error: data.train: boom in annotations.json'); print('bye'); sys.exit(3)",
        # still running until the failure has been printed, which it waits for
        "good/100pct/seed1": f"import pathlib, sys, time\nfor _ in range(300):\n"
        f"    if pathlib.Path({str(release)!r}).exists(): sys.exit(0)\n    time.sleep(0.1)\nsys.exit(9)",
    }
    monkeypatch.setattr(study_launch, "_command", lambda run, threads: [sys.executable, "-c", scripts[run.key]])
    printed = []

    def record(*args, **kwargs):
        text = " ".join(str(a) for a in args)
        printed.append(text)
        if "FAILED" in text:
            release.touch()

    monkeypatch.setattr(study_launch, "print", record, raising=False)
    runs = _runs(tmp_path, synth_data, [("bad", 0), ("good", 1)])
    started = time.monotonic()
    with pytest.raises(StudyError) as info:
        run_local(runs, tmp_path / "logs", parallel=2, progress=True, resume="defectfusion study --resume --out S")
    assert time.monotonic() - started < 25
    log = tmp_path / "logs" / "bad_100pct_seed0.log"
    failed = [line for line in printed if "FAILED" in line]
    assert failed == [
        f"study: bad/100pct/seed0 FAILED (exit 3): error: data.train: boom in annotations.json (log: {log})"
    ]
    # printed before the other run finished: that run only exits once it sees the failure printed
    assert printed.index(failed[0]) < next(i for i, line in enumerate(printed) if "good/100pct/seed1 finished" in line)
    message = str(info.value)
    assert message.startswith("1 of 2 study run(s) failed: bad/100pct/seed0 (exit 3: error: data.train: boom")
    assert "`defectfusion study --resume --out S`" in message and "good/" not in message


def test_failures_are_printed_even_when_quiet(tmp_path, synth_data, monkeypatch, capsys):
    monkeypatch.setattr(study_launch, "_command", lambda run, threads: [sys.executable, "-c", "raise SystemExit(2)"])
    with pytest.raises(StudyError, match="resume the study"):
        run_local(_runs(tmp_path, synth_data, [("a", 0)]), tmp_path / "logs", progress=False)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("study: a/100pct/seed0 FAILED (exit 2): no output (log: ")


def test_the_last_error_line_of_a_log():
    traceback = "epoch 1\nTraceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n"
    assert last_error_line(traceback) == "RuntimeError: CUDA out of memory"
    listed = "warning: x\nerror: cfg.yml: 2 problems, nothing was trained; fix them all:\n  - data.test: a\n  - b\n"
    assert (
        last_error_line(listed)
        == "error: cfg.yml: 2 problems, nothing was trained; fix them all: - data.test: a (and 1 more)"
    )
    assert last_error_line("step 1\nstep 2\n\n") == "step 2"
    assert last_error_line("") == "no output"


def test_cores_are_split_only_for_runs_whose_config_sets_no_threads():
    split = split_threads([None, None], at_once=4, cores=16)
    assert split.for_run(None) == (4, True)
    assert "4 run(s) at a time on 16 cores: 4 threads each; to choose, --threads N" in split.note

    configured = split_threads([3, 3], at_once=2, cores=16)
    assert configured.for_run(3) == (3, False)  # the config's, never overridden
    assert configured.note == "study: 2 run(s) at a time x train.threads 3 (the config's) on 16 cores"
    crowded = split_threads([8], at_once=4, cores=16)
    assert "up to 32 threads, more than the cores" in crowded.note and "lower --threads or --parallel" in crowded.note

    gpus = split_threads([None], at_once=2, cores=16, gpus=2)
    assert gpus.for_run(None) == (None, False) and "CPU threads as torch chooses" in gpus.note


def test_run_local_keeps_a_configured_thread_count(tmp_path, synth_data, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(study_launch, "_cores", lambda: 8)
    passed = {}

    def command(run, threads):
        passed[run.key] = threads
        return [sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"]

    monkeypatch.setattr(study_launch, "_command", command)
    configured = _runs(tmp_path / "a", synth_data, [("x", 0), ("x", 1)], train={"threads": 3})
    run_local(configured, tmp_path / "logs_a", parallel=2)
    assert passed == {"x/100pct/seed0": None, "x/100pct/seed1": None}  # no -o train.threads over the config's
    assert (tmp_path / "logs_a" / "x_100pct_seed0.log").read_text().strip() == "3"
    assert "train.threads 3 (the config's) on 8 cores" in capsys.readouterr().out

    unset = _runs(tmp_path / "b", synth_data, [("y", 0), ("y", 1)], train={"threads": None})
    run_local(unset, tmp_path / "logs_b", parallel=2)
    assert passed["y/100pct/seed0"] == 4 and (tmp_path / "logs_b" / "y_100pct_seed1.log").read_text().strip() == "4"
    assert "2 run(s) at a time on 8 cores: 4 threads each; to choose, --threads N" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failed_slurm_job_is_printed_with_its_error(tmp_path, synth_data, capsys):
    pytest.importorskip("submitit")
    from defectfusion.commands.study_launch import SlurmOptions, run_slurm

    runs = _runs(tmp_path, synth_data, [("text", 0)], fusion={"descriptions": str(tmp_path / "absent.yml")})
    with pytest.raises(StudyError, match="1 of 1 study job"):
        run_slurm(runs, tmp_path / "slurm", SlurmOptions(cluster="local", poll_seconds=0.5), progress=False)
    out = capsys.readouterr().out
    assert "study: text/100pct/seed0 FAILED (job " in out and "absent.yml" in out and "(log: " in out
