"""Running a study's training runs: a local pool of processes, or Slurm jobs through ``submitit``.

Every run is an ordinary ``defectfusion train`` of its own config into its own folder, resumable on
its own: a killed study, re-run, trains only what is missing and resumes what was cut off.

- ``local``: ``parallel`` runs at a time, each a separate process; on a GPU machine one per visible
  GPU (``CUDA_VISIBLE_DEVICES``), on CPUs the cores split evenly between them.
- ``slurm``: one job per run through ``submitit`` (the launcher DINOv2 and detectron2 use);
  ``cluster="local"`` runs the same jobs with submitit's local executor (tests, a workstation).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DefectFusionError
from .study_plan import StudyRun


class StudyError(DefectFusionError):
    """Runs of the study failed (the message names them and their logs)."""


@dataclass
class SlurmOptions:
    partition: str | None = None
    timeout_min: int = 24 * 60
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    cluster: str | None = None  # None: submitit decides (Slurm when sbatch exists); "local": no cluster


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _command(run: StudyRun, threads: int | None) -> list[str]:
    out = Path(run.folder)
    cmd = [sys.executable, "-m", "defectfusion", "train", run.config, "--out", str(out), "--quiet"]
    if (out / "config.yaml").is_file():
        cmd.append("--resume")
    if threads:
        cmd += ["-o", f"train.threads={threads}"]
    return cmd


def _last_line(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if log.is_file() else []
    return lines[-1] if lines else "no output"


def run_local(runs: Sequence[StudyRun], logs: Path, parallel: int = 1, progress: bool = True) -> None:
    """Train ``runs`` in ``parallel`` processes; one :class:`StudyError` lists every run that failed."""
    import torch

    parallel = max(1, int(parallel))
    gpus = torch.cuda.device_count()
    threads = None if gpus else max(1, _cores() // parallel)
    logs.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[int, StudyRun]) -> tuple[StudyRun, int, Path]:
        slot, run = item
        log = logs / f"{run.key.replace('/', '_').replace(':', '_')}.log"
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        else:
            env["OMP_NUM_THREADS"] = str(threads)
        if progress:
            print(f"study: training {run.key} (log: {log})", flush=True)
        with open(log, "w", encoding="utf-8") as sink:
            code = subprocess.run(_command(run, threads), stdout=sink, stderr=subprocess.STDOUT, env=env).returncode
        return run, code, log

    workers = min(parallel, gpus) if gpus else parallel
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, enumerate(runs)))
    failed = [(r, code, log) for r, code, log in results if code != 0]
    if failed:
        detail = "; ".join(f"{r.key} (exit {code}: {_last_line(log)}; log {log})" for r, code, log in failed)
        raise StudyError(f"{len(failed)} of {len(runs)} study run(s) failed: {detail}. Re-run the study to resume them")


def train_job(config: str, out: str) -> str:
    """What a Slurm job runs: one ordinary training run (resumed when its folder holds one)."""
    from .train import train

    resume = (Path(out) / "config.yaml").is_file()
    train(config, out, resume=resume, progress=False)
    return out


def run_slurm(runs: Sequence[StudyRun], folder: Path, options: SlurmOptions, progress: bool = True) -> list[Any]:
    """Submit one job per run and wait for them; failures are one :class:`StudyError`."""
    try:
        import submitit
    except ImportError:
        raise StudyError(
            "the slurm launcher needs submitit, which is not installed: pip install 'defectfusion[cluster]'"
        ) from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=options.cluster)
    params: dict[str, Any] = {"timeout_min": options.timeout_min, "name": "defectfusion-study"}
    if executor.cluster == "slurm":
        params.update(
            slurm_partition=options.partition, gpus_per_node=options.gpus_per_node, cpus_per_task=options.cpus_per_task
        )
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    jobs = [executor.submit(train_job, run.config, run.folder) for run in runs]
    if progress:
        print(f"study: {len(jobs)} job(s) submitted ({executor.cluster}): {', '.join(j.job_id for j in jobs)}")
    failed = []
    for run, job in zip(runs, jobs, strict=True):
        try:
            job.result()
        except Exception as exc:  # a job's own error, re-raised by submitit
            text = " ".join(str(exc).split())[-300:]
            failed.append(f"{run.key} (job {job.job_id}: {text})")
    if failed:
        raise StudyError(
            f"{len(failed)} of {len(runs)} study job(s) failed: {'; '.join(failed)}. Re-run the study to resume them"
        )
    return jobs
