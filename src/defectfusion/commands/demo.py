"""`defectfusion demo`: the whole phase-2 story on a laptop CPU, with honest numbers.

1. synthetic six-class defect data (``data/synthetic.py``);
2. a tiny DEIMv2 baseline trained from scratch, then phases 1 -> 2 -> 3 with the offline
   MiniLM text encoder (``<out>/text``);
3. the same phases from the same baseline with random "text" of the same shape, the control
   (``<out>/control``), trained in a second process beside the text phases;
4. every model scored on the validation images, a paired bootstrap of the differences,
   text-visual explanation maps, and a report whose verdict is computed from the numbers.

Re-running with the same ``--out`` resumes where a killed demo stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import load_config
from ..data.coco import load_coco
from ..data.descriptions import resolve_pair
from ..data.images import load_image
from ..data.synthetic import generate_synthetic_dataset
from ..engine.bootstrap import difference_interval, image_draws, resample
from ..engine.explainer import explain_image
from ..engine.predictor import Predictor
from ..engine.progressive import run_training
from ..engine.validation import evaluate_on_index
from ..errors import ConfigError, DefectFusionError
from ..io import atomic_write_json, read_json
from ..models.checkpoint import load_detector
from ..report.explain import write_explanation
from .demo_report import PHASES, demo_summary, write_demo_report, write_verdict


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is."""

    train_images: int
    val_images: int
    image_size: int
    baseline_epochs: int
    phase_epochs: tuple[int, int, int]
    explain_images: int
    bootstrap_draws: int


FULL = DemoPlan(400, 80, 256, 12, (1, 1, 1), 3, 100)
# The same steps and files in a couple of minutes (the test suite runs it).
QUICK = DemoPlan(32, 16, 128, 2, (1, 1, 1), 1, 20)


class DemoError(DefectFusionError):
    """A step of the demo failed (the message says which and where its log is)."""


@dataclass
class DemoResult:
    out: Path
    report_md: Path
    report_html: Path
    summary: dict[str, Any]


def demo_overrides(data: Path, plan: DemoPlan, cache_dir: Path | None = None) -> dict[str, list[str]]:
    """Overrides of the packaged ``demo`` config for the three runs: baseline, text, control.

    The text and control runs start from the baseline run's best checkpoint (their
    ``model.checkpoint`` is added once it exists) and run the same three phases, the control with
    random unit vectors in place of the text.
    """
    common = [
        f"data.train.annotations={data / 'train' / 'annotations.json'}",
        f"data.val.annotations={data / 'val' / 'annotations.json'}",
        f"model.image_size=[{plan.image_size}, {plan.image_size}]",
        f"phases.baseline.epochs={plan.baseline_epochs}",
        *(f"phases.{p}.epochs={e}" for p, e in zip(PHASES, plan.phase_epochs, strict=True)),
    ]
    if cache_dir is not None:
        common.append(f"fusion.cache_dir={cache_dir}")
    phases = f"order=[{', '.join(PHASES)}]"
    return {
        "baseline": [*common, "name=demo-baseline", "order=[baseline]"],
        "text": [*common, "name=demo-text", phases],
        "control": [*common, "name=demo-control", phases, "fusion.text=random"],
    }


def default_workers() -> int:
    """Data-parallel processes for the baseline: one per core, at most two."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(2, cores))


# Children of the demo: one thread each, and no advice meant for GPU clusters in the output.
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TORCH_CPP_LOG_LEVEL": "ERROR", "LOGLEVEL": "ERROR"}


def _training_process(overrides: list[str], out: Path, log: Path | None, *, workers: int = 1) -> subprocess.Popen:
    """``defectfusion train demo`` in child process(es), resuming a run already started in ``out``.

    The demo trains in other processes only where running beside or across processes is the
    point: the baseline data-parallel under torchrun (``workers`` > 1), the control beside the text
    phases. ``log``: where the children's output goes (None: this terminal).
    """
    launcher = [sys.executable]
    if workers > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}"]
    cmd = [*launcher, "-m", "defectfusion", "train", "demo", "--out", str(out)]
    cmd += [arg for o in overrides for arg in ("-o", o)]
    cmd += ["--resume"] if (out / "config.yaml").is_file() else []
    cmd += ["--quiet"] if log is not None else []
    if log is None:
        return subprocess.Popen(cmd, env={**os.environ, **_CHILD_ENV})
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **_CHILD_ENV})


def _train_here(overrides: list[str], out: Path, progress: bool) -> dict[str, Any]:
    """Train (or resume) one demo run in this process; returns its ``summary.json``."""
    resume = (out / "config.yaml").is_file()
    return run_training(load_config("demo", overrides), out, resume=resume, progress=progress)


def _summary(out: Path, code: int, log: Path | None, what: str) -> dict[str, Any]:
    summary = out / "summary.json"
    if code != 0 or not summary.is_file():
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if log and log.is_file() else []
        where = f"{lines[-1] if lines else 'no output'} (whole log: {log})" if log else "see the output above"
        raise DemoError(f"the {what} run stopped with exit code {code}: {where}; run the demo again to resume it")
    return read_json(summary, f"the {what} run's summary")


def _train_baseline(overrides: list[str], out: Path, progress: bool, workers: int) -> dict[str, Any]:
    """The baseline from scratch, data-parallel over ``workers`` single-threaded processes.

    On two cores, two processes on half a batch each train this model ~1.2x faster than one
    process with two threads (its many small operations do not split well over threads).
    """
    if (out / "baseline" / "result.json").is_file() and (out / "summary.json").is_file():
        return read_json(out / "summary.json", "the baseline run's summary")  # finished before
    if workers <= 1:
        return _train_here(overrides, out, progress)
    batch = load_config("demo", overrides).data.batch_size
    per_process = [f"data.batch_size={max(1, batch // workers)}", "train.threads=1"]
    log = None if progress else out.parent / "baseline.log"
    code = _training_process([*overrides, *per_process], out, log, workers=workers).wait()
    return _summary(out, code, log, "baseline")


def _start_control(overrides: list[str], out: Path, log: Path) -> subprocess.Popen:
    """The control run in a process of its own, one thread, beside the text phases.

    On two cores, two single-threaded trainings finish sooner than the same two one after the
    other with two threads each.
    """
    return _training_process(overrides, out, log)


def _finish_control(proc: subprocess.Popen, out: Path, log: Path) -> dict[str, Any]:
    return _summary(out, proc.wait(), log, "control")


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _metrics(path: Path) -> dict[str, Any]:
    return read_json(path / "metrics.json", "metrics file")


def _fused_final(summary: dict[str, Any], run: Path) -> tuple[str, Path]:
    """The text run's chosen model if fused, else its best-scoring phase (for explanations)."""
    final = summary.get("final") or {}
    if final.get("phase") in PHASES:
        return final["phase"], Path(final["source"])
    phases = [(summary["phases"][p]["best_map50"] or -1.0, p) for p in PHASES if p in summary["phases"]]
    best = max(phases)[1] if phases else "phase1"
    return best, run / best / "best"


def run_demo(
    out: str | Path = "runs/demo",
    quick: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> DemoResult:
    """Run the demo into ``out`` and return where the report is.

    ``workers``: data-parallel processes for the baseline (default :func:`default_workers`; 1
    trains it in this process).
    """
    out = Path(out)
    plan = QUICK if quick else FULL
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"demo: workers must be at least 1, got {workers}")
    say = print if progress else (lambda *_a, **_k: None)
    out.mkdir(parents=True, exist_ok=True)

    data = out / "data"
    if not (data / "val" / "annotations.json").is_file():
        say(f"[1/5] synthetic data: {plan.train_images} train + {plan.val_images} val images, {plan.image_size} px")
        generate_synthetic_dataset(
            data, train=plan.train_images, val=plan.val_images, size=plan.image_size, seed=0, progress=progress
        )
    runs = demo_overrides(data, plan, Path(cache_dir) if cache_dir else None)
    how = f"{workers} data-parallel processes" if workers > 1 else "one process"
    say(f"[2/5] the baseline: a tiny DEIMv2 trained from scratch ({how})")
    baseline = _train_baseline(runs["baseline"], out / "baseline", progress, workers)
    baseline_dir = Path(baseline["phases"]["baseline"]["best_dir"]).resolve()
    start = f"model.checkpoint={baseline_dir}"
    log = out / "control.log"
    say(
        f"[3/5] phases 1-3 with the class descriptions (MiniLM); beside them the control, the same phases from "
        f"the same baseline with random text vectors (log: {log})"
    )
    control_proc = _start_control([*runs["control"], start], out / "control", log)
    try:
        with _threads(1):
            text = _train_here([*runs["text"], start], out / "text", progress)
    except BaseException:
        control_proc.terminate()
        control_proc.wait()
        raise
    if control_proc.poll() is None:
        say("text phases done; waiting for the control run")
    control = _finish_control(control_proc, out / "control", log)

    say("[4/5] scoring baseline, text and control on the validation images")
    val = load_coco(data / "val" / "annotations.json")
    pair = resolve_pair(None, list(val.class_names), [data / "descriptions.yml"])
    top_k = load_config("demo", runs["text"]).train.top_k
    finals = {
        "baseline": baseline_dir,
        "text": out / "text" / "final",
        "control": out / "control" / "final",
    }
    scored: dict[str, dict[str, Any]] = {}
    detections = {}
    for name, folder in finals.items():
        predictor = Predictor.from_checkpoint(folder, top_k=top_k)
        metrics, kept = evaluate_on_index(predictor, val, keep=[r.id for r in val.images], progress=False, desc=name)
        scored[name], detections[name] = metrics, kept
    draws = image_draws([r.id for r in val.images], plan.bootstrap_draws, seed=0)
    samples = resample(val.to_coco_dict(), detections, draws)
    intervals = {
        "text_vs_baseline": difference_interval(samples, "text", "baseline", _diff(scored["text"], scored["baseline"])),
        "control_vs_baseline": difference_interval(
            samples, "control", "baseline", _diff(scored["control"], scored["baseline"])
        ),
        "text_vs_control": difference_interval(samples, "text", "control", _diff(scored["text"], scored["control"])),
    }

    say("[5/5] explanation maps and the report")
    fused_name, fused_dir = _fused_final(text, out / "text")
    explain_files = _explanations(fused_dir, val, out / "report" / "explain", plan.explain_images, pair)
    verdict = write_verdict(scored, intervals, text, control, pair)
    summary = demo_summary(dict(plan.__dict__), baseline, text, control, scored, intervals, verdict, fused_name)
    atomic_write_json(out / "summary.json", summary)
    md, html = write_demo_report(out, val, scored, text, control, intervals, verdict, explain_files, detections, pair)
    say(f"report: {html}")
    return DemoResult(out, md, html, summary)


def _diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    if a["map50"] is None or b["map50"] is None:
        return float("nan")
    return a["map50"] - b["map50"]


def _explanations(checkpoint: Path, val, folder: Path, count: int, pair: tuple[str, str] | None) -> list[Path]:
    """Explain the validation images that hold both classes of the confusable pair (else the busiest ones)."""
    model = load_detector(checkpoint)
    names = list(val.class_names)
    pair_labels = {names.index(c) for c in pair} if pair else set()

    def rank(record) -> tuple[int, int]:
        labels = {a.label for a in val.annotations[record.id] if not a.iscrowd}
        return (-len(labels & pair_labels), -len(labels))

    chosen = sorted(val.images, key=lambda r: (*rank(r), r.id))[:count]
    files: list[Path] = []
    for record in chosen:
        explanation = explain_image(model, load_image(record.path), threshold=0.3, max_detections=6)
        written = write_explanation(explanation, folder / record.path.stem)
        files += [written.maps_png, written.matches_png]
    return files
