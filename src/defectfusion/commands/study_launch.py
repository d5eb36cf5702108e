"""Running a study's training runs: a local pool of processes, or Slurm jobs through ``submitit``.

Every run is an ordinary ``defectfusion train`` of its own config into its own folder, resumable on
its own: a killed study, re-run, trains only what is missing and resumes what was cut off.

- ``local``: ``parallel`` runs at a time, each a separate process; on a GPU machine one per visible
  GPU (``CUDA_VISIBLE_DEVICES``), on CPUs the cores split evenly between them, unless the runs'
  config sets ``train.threads`` (``--threads``): then that, never overridden (:func:`split_threads`).
- A run that fails is printed when it fails, with the last error line of its log; the others go on.
- ``slurm``: one job per run through ``submitit`` (the launcher DINOv2 and detectron2 use);
  ``cluster="local"`` runs the same jobs with submitit's local executor (tests, a workstation).
  A job signalled before its time limit, or preempted, requeues itself and the requeued job resumes
  its run (:class:`TrainJob`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DefectFusionError
from .study_plan import StudyRun

if TYPE_CHECKING:
    from submitit.helpers import DelayedSubmission


class StudyError(DefectFusionError):
    """Runs of the study failed (the message names them and their logs)."""


@dataclass
class SlurmOptions:
    partition: str | None = None
    timeout_min: int = 24 * 60
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    cluster: str | None = None  # None: submitit decides (Slurm when sbatch exists); "local": no cluster
    poll_seconds: float = 5.0  # how often finished jobs are looked for
    max_timeouts: int = 3  # time-limit requeues of one job (preemptions do not count); then it fails


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadSplit:
    """How a local study gives CPU threads to the runs it trains at once.

    A run whose config sets ``train.threads`` (``--threads N``, ``-o train.threads=N``) gets those;
    the others get ``split``: the cores shared by the runs at a time (None on GPUs: torch's choice).
    """

    split: int | None
    note: str  # the one line that says how, and how to choose

    def for_run(self, configured: int | None) -> tuple[int | None, bool]:
        """The run's threads, and whether the launcher must pass them (its config sets none)."""
        if configured:
            return configured, False
        return self.split, self.split is not None


def split_threads(configured: Sequence[int | None], at_once: int, cores: int, gpus: int = 0) -> ThreadSplit:
    """The threads of runs whose configs set ``configured`` (None: not set), ``at_once`` at a time."""
    at_once = max(1, at_once)
    split = None if gpus else max(1, cores // at_once)
    chosen = sorted({t for t in configured if t})
    unset = any(not t for t in configured)
    if not chosen:
        how = f"{split} threads each" if split else "CPU threads as torch chooses"
        note = (
            f"study: {at_once} run(s) at a time on {cores} cores{f' and {gpus} GPU(s)' if gpus else ''}: {how}; "
            f"to choose, --threads N (or -o train.threads=N)"
        )
        return ThreadSplit(split, note)
    used = max(chosen) * at_once
    note = (
        f"study: {at_once} run(s) at a time x train.threads {'/'.join(map(str, chosen))} (the config's)"
        + (f", {split} threads for runs without it" if unset and split else "")
        + f" on {cores} cores"
    )
    if used > cores:
        note += (
            f": up to {used} threads, more than the cores, so the runs slow each other; lower --threads or --parallel"
        )
    return ThreadSplit(split, note)


def _command(run: StudyRun, threads: int | None) -> list[str]:
    """``defectfusion train`` of the run (resumed when its folder holds one); ``threads``: passed as an override."""
    out = Path(run.folder)
    cmd = [sys.executable, "-m", "defectfusion", "train", run.config, "--out", str(out), "--quiet"]
    if (out / "config.yaml").is_file():
        cmd.append("--resume")
    if threads:
        cmd += ["-o", f"train.threads={threads}"]
    return cmd


def last_error_line(text: str) -> str:
    """The last line of ``text`` that looks like an error (``error: ...``, ``...Error: ...``), else its last line."""
    raw = [line.rstrip() for line in text.splitlines() if line.strip()]
    lines = [line.strip() for line in raw]
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if line.lower().startswith("error:") or "Error" in line:
            # the problems a preflight error lists below it, one "  - " line each
            items = [item.strip() for item in raw[i + 1 :] if item.startswith("  - ")]
            if items:
                line += f" {items[0]}" + (f" (and {len(items) - 1} more)" if len(items) > 1 else "")
            return line
    return lines[-1] if lines else "no output"


def _log_error(log: Path) -> str:
    return last_error_line(log.read_text(encoding="utf-8", errors="replace")) if log.is_file() else "no log"


def _resume_advice(resume: str | None) -> str:
    how = f"`{resume}`" if resume else "the same study command with --resume"
    return f"Fix what their logs say, then resume the study ({how}): finished runs are kept"


def run_local(
    runs: Sequence[StudyRun],
    logs: Path,
    parallel: int = 1,
    progress: bool = True,
    resume: str | None = None,
) -> None:
    """Train ``runs`` in ``parallel`` processes; one :class:`StudyError` lists every run that failed.

    A run that fails is printed when it fails (its key, exit status, last error line and log), even
    with ``progress`` off; the others go on. ``resume``: the command that resumes the study, for the
    error's advice.
    """
    import torch

    from ..config import load_config

    parallel = max(1, int(parallel))
    gpus = torch.cuda.device_count()
    workers = min(parallel, gpus) if gpus else parallel
    configured = {run.key: load_config(run.config).train.threads for run in runs}
    split = split_threads(list(configured.values()), min(workers, len(runs)), _cores(), gpus)
    if progress:
        print(split.note, flush=True)
    logs.mkdir(parents=True, exist_ok=True)
    lock, finished = threading.Lock(), [0]

    def one(item: tuple[int, StudyRun]) -> tuple[StudyRun, int, Path]:
        slot, run = item
        log = logs / f"{run.key.replace('/', '_').replace(':', '_')}.log"
        threads, override = split.for_run(configured[run.key])
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)  # OpenMP outside torch (numpy, OpenCV) follows
        if progress:
            print(f"study: training {run.key} (log: {log})", flush=True)
        command = _command(run, threads if override else None)
        with open(log, "w", encoding="utf-8") as sink:
            code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env).returncode
        with lock:
            finished[0] += 1
            if code != 0:
                print(f"study: {run.key} FAILED (exit {code}): {_log_error(log)} (log: {log})", flush=True)
            elif progress:
                print(f"study: {run.key} finished ({finished[0]}/{len(runs)} done)", flush=True)
        return run, code, log

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, enumerate(runs)))
    failed = [(r, code, log) for r, code, log in results if code != 0]
    if failed:
        detail = "; ".join(f"{r.key} (exit {code}: {_log_error(log)}; log {log})" for r, code, log in failed)
        raise StudyError(f"{len(failed)} of {len(runs)} study run(s) failed: {detail}. {_resume_advice(resume)}")


class TrainJob:
    """What a Slurm job runs: one ordinary training run, resumed when its folder holds one.

    Before a job's time limit Slurm sends it ``USR2`` (submitit's ``--signal``, 90 s ahead), and so
    does a preemption with a grace time (after a ``SIGTERM`` submitit ignores); submitit then calls
    :meth:`checkpoint`, saves the submission it returns and requeues the job. The requeued job runs
    that submission: this run again, which finds its folder and resumes as ``train --resume`` does,
    each phase from its ``last`` state. ``last`` is saved after every epoch (after its evaluation), so
    what an interrupted epoch had trained is lost and is trained again from the previous epoch's
    state (weights, optimiser, schedule, EMA, random state).
    """

    def __init__(self, config: str, out: str) -> None:
        self.config, self.out = str(config), str(out)

    def __call__(self) -> str:
        from .train import train

        resume = (Path(self.out) / "config.yaml").is_file()
        print(f"defectfusion study job: {'resuming' if resume else 'starting'} the run in {self.out}", flush=True)
        train(self.config, self.out, resume=resume, progress=False)
        return self.out

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """The submission the requeued job runs: the same run (its state is already in its folder)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(TrainJob(self.config, self.out), *args, **kwargs)


def run_slurm(
    runs: Sequence[StudyRun], folder: Path, options: SlurmOptions, progress: bool = True, resume: str | None = None
) -> list[Any]:
    """Submit one job per run and wait for them; a job that fails is printed when it is seen failed,
    and the failures are one :class:`StudyError` at the end. A job that reaches its time limit (or is
    preempted) requeues itself and resumes its run (:class:`TrainJob`), up to ``options.max_timeouts``
    times for the limit."""
    try:
        import submitit
    except ImportError:
        raise StudyError(
            "the slurm launcher needs submitit, which is not installed: pip install 'defectfusion[cluster]'"
        ) from None
    executor = submitit.AutoExecutor(
        folder=str(folder),
        cluster=options.cluster,
        slurm_max_num_timeout=options.max_timeouts,
        local_max_num_timeout=options.max_timeouts,
    )
    params: dict[str, Any] = {"timeout_min": options.timeout_min, "name": "defectfusion-study"}
    if executor.cluster == "slurm":
        params.update(
            slurm_partition=options.partition, gpus_per_node=options.gpus_per_node, cpus_per_task=options.cpus_per_task
        )
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    jobs = [executor.submit(TrainJob(run.config, run.folder)) for run in runs]
    if progress:
        print(f"study: {len(jobs)} job(s) submitted ({executor.cluster}): {', '.join(j.job_id for j in jobs)}")
    failed = []
    waiting = list(zip(runs, jobs, strict=True))
    while waiting:
        done = [(run, job) for run, job in waiting if job.done()]
        for run, job in done:
            waiting.remove((run, job))
            try:
                job.result()
            except Exception as exc:  # a job's own error, re-raised by submitit
                line = last_error_line(str(exc).split("You can check full logs")[0])[:300]  # not submitit's log list
                log = getattr(job.paths, "stderr", folder)
                print(f"study: {run.key} FAILED (job {job.job_id}): {line} (log: {log})", flush=True)
                failed.append(f"{run.key} (job {job.job_id}: {line}; log {log})")
            else:
                if progress:
                    print(f"study: {run.key} finished (job {job.job_id})", flush=True)
        if waiting and not done:
            time.sleep(options.poll_seconds)
    if failed:
        raise StudyError(
            f"{len(failed)} of {len(runs)} study job(s) failed: {'; '.join(failed)}. {_resume_advice(resume)}"
        )
    return jobs
