"""The launchers: local failures printed when they happen, threads as the config sets them; Slurm jobs
that reach their time limit requeue themselves and resume their run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

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


# ----------------------------------------------------------------------------- slurm: time limits


def _job_environment():
    """submitit's environment inside a job, its requeue recorded instead of asking Slurm."""
    from submitit.local.local import LocalJobEnvironment

    class Recorded(LocalJobEnvironment):
        def __init__(self) -> None:
            super().__init__()
            self.requeued: list[int] = []

        def _requeue(self, countdown: int) -> None:
            self.requeued.append(countdown)

    return Recorded()


def _signal(paths, environment, monkeypatch):
    """What submitit does in a job on the time-limit signal: load the job's submission, call its handler."""
    import signal

    from submitit.core import job_environment, utils

    def leave():  # the handler's sys.exit once requeued
        raise SystemExit(-1)

    delayed = utils.DelayedSubmission.load(paths.submitted_pickle)
    handler = job_environment.SignalHandler(environment, paths, delayed)
    monkeypatch.setattr(handler, "_exit", leave)
    handler.checkpoint_and_try_requeue(signal.SIGUSR2)


def test_a_job_at_its_time_limit_requeues_itself_and_the_requeued_job_resumes_its_run(tmp_path, monkeypatch):
    """Checked to fail with the plain function the launcher submitted before: submitit then answers
    the signal with 'timed-out and not checkpointable' and the run is lost."""
    pytest.importorskip("submitit")
    from submitit.core import utils

    from defectfusion.commands import train as train_command
    from defectfusion.commands.study_launch import TrainJob

    calls = []
    monkeypatch.setattr(train_command, "train", lambda config, out, **kw: calls.append((config, out, kw["resume"])))
    out = tmp_path / "runs" / "text0"
    delayed = utils.DelayedSubmission(TrainJob("cfg.yml", str(out)))
    # timeout_min 5 (< 50): submitit counts any signal as the time limit (it allows 10 minutes of margin)
    delayed.set_timeout(timeout_min=5, max_num_timeout=1)
    paths = utils.JobPaths(tmp_path / "jobs", job_id="7", task_id=0)
    paths.folder.mkdir()
    delayed.dump(paths.submitted_pickle)

    assert delayed.result() == str(out) and calls == [("cfg.yml", str(out), False)]  # first attempt: a new run
    (out / "config.yaml").parent.mkdir(parents=True)
    (out / "config.yaml").write_text("name: test\n")  # ... which the first attempt started
    environment = _job_environment()
    with pytest.raises(SystemExit):
        _signal(paths, environment, monkeypatch)
    assert environment.requeued == [0]  # requeued, with no time-limit requeue left (max_num_timeout 1)
    requeued = utils.DelayedSubmission.load(paths.submitted_pickle)  # what the requeued job runs
    assert isinstance(requeued.function, TrainJob) and (requeued.function.config, requeued.function.out) == (
        "cfg.yml",
        str(out),
    )
    assert requeued.result() == str(out) and calls[-1] == ("cfg.yml", str(out), True)  # it resumes the run
    # a second time limit is one too many: the job ends (submitit records it failed) instead of looping
    with pytest.raises(utils.UncompletedJobError, match="timed-out too many times"):
        _signal(paths, environment, monkeypatch)
    assert environment.requeued == [0]


def _task_of(folder) -> int:
    """The pid of the process running a submitit job whose files are in ``folder`` (started by this test)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in command and str(folder).encode() in command:
            return int(entry.name)
    raise AssertionError(f"no submitit job process for {folder}")


@pytest.mark.slow
def test_a_slurm_job_signalled_mid_phase_is_requeued_and_finishes_its_run(tmp_path, synth_data):
    """submitit's local executor runs the job as Slurm would: the job gets the time-limit signal after its
    first epochs, requeues itself, and the second attempt resumes the phase from `last` and finishes it."""
    submitit = pytest.importorskip("submitit")
    if not Path("/proc/self/cmdline").is_file():
        pytest.skip("finds the job's process in /proc (Linux)")
    import json
    import os
    import threading

    from defectfusion.commands.study_launch import SlurmOptions, run_slurm

    runs = _runs(tmp_path, synth_data, [("plain", 0)], order=["baseline"], phases={"baseline": {"epochs": 4}})
    run = Path(runs[0].folder)
    folder = tmp_path / "slurm"
    outcome: dict = {}

    def launch():
        try:  # timeout_min 5: submitit reads any signal as the time limit; the local one comes after 4.5 min
            outcome["jobs"] = run_slurm(runs, folder, SlurmOptions(cluster="local", timeout_min=5, poll_seconds=0.2))
        except BaseException as exc:  # noqa: BLE001 (re-raised below, in the test's thread)
            outcome["error"] = exc

    thread = threading.Thread(target=launch)
    thread.start()
    state = run / "baseline" / "last" / "trainer.json"
    deadline = time.monotonic() + 240
    while thread.is_alive() and time.monotonic() < deadline:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    saved = json.loads(state.read_text())["epoch"]
    logged = [json.loads(line) for line in (run / "baseline" / "metrics.jsonl").read_text().splitlines()]
    before = [r for r in logged if r["epoch"] <= saved]
    assert 1 <= saved < 4 and thread.is_alive()
    os.kill(_task_of(folder), submitit.JobEnvironment._usr_sig())  # what the controller (Slurm) sends
    thread.join(timeout=400)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]

    [job] = outcome["jobs"]
    log = job.stdout() + job.stderr()
    assert log.count(f"starting the run in {run}") == 1 and log.count(f"resuming the run in {run}") == 1, log
    assert "Requeued job" in log
    summary = json.loads((run / "summary.json").read_text())
    phase = summary["phases"]["baseline"]
    assert phase["epochs_run"] == 4 and phase["stop_reason"] == "completed 4 epochs"
    assert summary["final"] is not None and (run / "final").is_dir()
    records = [json.loads(line) for line in (run / "baseline" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]  # every evaluation once
    # resumed, not restarted: the epochs saved before the signal are the first attempt's records
    assert records[: len(before)] == before
