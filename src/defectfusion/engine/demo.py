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

import math
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
from ..data.images import load_image
from ..data.synthetic import generate_synthetic_dataset
from ..errors import ConfigError, DefectFusionError
from ..io import atomic_write_json, read_json
from ..models.checkpoint import load_detector
from ..report.compare import confusion_pair, fmt_delta, fmt_value
from ..report.explain import explain_image, write_explanation
from ..report.plots import plot_ap_bars_many
from ..report.summary import Section, build_report
from .bootstrap import Interval, bootstrap_map50, difference_interval
from .evaluate import evaluate_on_index
from .predictor import Predictor
from .progressive import run_training

PAIR = ("ROTURA_FRACTURA", "RAYONES_ARANAZOS")
PHASES = ("phase1", "phase2", "phase3")


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


def _command(overrides: list[str], out: Path, quiet: bool) -> list[str]:
    """``defectfusion train demo`` with these overrides, resuming a run already started in ``out``."""
    cmd = ["-m", "defectfusion", "train", "demo", "--out", str(out)]
    cmd += [arg for o in overrides for arg in ("-o", o)]
    cmd += ["--resume"] if (out / "config.yaml").is_file() else []
    return cmd + (["--quiet"] if quiet else [])


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


# Children of the demo: one thread each, and no advice meant for GPU clusters in the output.
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TORCH_CPP_LOG_LEVEL": "ERROR", "LOGLEVEL": "ERROR"}


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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}"]
    cmd += _command([*overrides, *per_process], out, quiet=not progress)
    log = None if progress else out.parent / "baseline.log"
    with open(log or os.devnull, "w", encoding="utf-8") as sink:
        done = subprocess.run(cmd, env={**os.environ, **_CHILD_ENV}, check=False,
                              stdout=None if progress else sink, stderr=None if progress else subprocess.STDOUT)
    return _summary(out, done.returncode, log, "baseline")


def _start_control(overrides: list[str], out: Path, log: Path) -> subprocess.Popen:
    """The control run in a process of its own, one thread, beside the text phases.

    On two cores, two single-threaded trainings finish sooner than the same two one after the
    other with two threads each.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as sink:
        return subprocess.Popen([sys.executable, *_command(overrides, out, quiet=True)], stdout=sink,
                                stderr=subprocess.STDOUT, env={**os.environ, **_CHILD_ENV})


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


def run_demo(out: str | Path = "runs/demo", quick: bool = False, progress: bool = True,
             cache_dir: str | Path | None = None, workers: int | None = None) -> DemoResult:
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
        generate_synthetic_dataset(data, train=plan.train_images, val=plan.val_images, size=plan.image_size,
                                   seed=0, progress=progress)
    runs = demo_overrides(data, plan, Path(cache_dir) if cache_dir else None)
    how = f"{workers} data-parallel processes" if workers > 1 else "one process"
    say(f"[2/5] the baseline: a tiny DEIMv2 trained from scratch ({how})")
    baseline = _train_baseline(runs["baseline"], out / "baseline", progress, workers)
    baseline_dir = Path(baseline["phases"]["baseline"]["best_dir"]).resolve()
    start = f"model.checkpoint={baseline_dir}"
    log = out / "control.log"
    say(f"[3/5] phases 1-3 with the class descriptions (MiniLM); beside them the control, the same phases from "
        f"the same baseline with random text vectors (log: {log})")
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
        metrics, kept = evaluate_on_index(predictor, val, keep=[r.id for r in val.images], progress=False,
                                          desc=name)
        scored[name], detections[name] = metrics, kept
    samples = bootstrap_map50(val.to_coco_dict(), detections, draws=plan.bootstrap_draws, seed=0)
    intervals = {
        "text_vs_baseline": difference_interval(samples, "text", "baseline",
                                                _diff(scored["text"], scored["baseline"])),
        "control_vs_baseline": difference_interval(samples, "control", "baseline",
                                                   _diff(scored["control"], scored["baseline"])),
        "text_vs_control": difference_interval(samples, "text", "control",
                                               _diff(scored["text"], scored["control"])),
    }

    say("[5/5] explanation maps and the report")
    fused_name, fused_dir = _fused_final(text, out / "text")
    explain_files = _explanations(fused_dir, val, out / "report" / "explain", plan.explain_images)
    verdict = write_verdict(scored, intervals, text, control)
    summary = _demo_summary(plan, baseline, text, control, scored, intervals, verdict, fused_name)
    atomic_write_json(out / "summary.json", summary)
    md, html = _report(out, val, scored, text, control, intervals, verdict, explain_files, detections)
    say(f"report: {html}")
    return DemoResult(out, md, html, summary)


def _diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    if a["map50"] is None or b["map50"] is None:
        return float("nan")
    return a["map50"] - b["map50"]


def _explanations(checkpoint: Path, val, folder: Path, count: int) -> list[Path]:
    """Explain the validation images that hold both a crack and a scratch (else the busiest ones)."""
    model = load_detector(checkpoint)
    names = list(val.class_names)
    pair = {names.index(c) for c in PAIR if c in names}

    def rank(record) -> tuple[int, int]:
        labels = {a.label for a in val.annotations[record.id] if not a.iscrowd}
        return (-len(labels & pair), -len(labels))

    chosen = sorted(val.images, key=lambda r: (*rank(r), r.id))[:count]
    files: list[Path] = []
    for record in chosen:
        explanation = explain_image(model, load_image(record.path), threshold=0.3, max_detections=6)
        written = write_explanation(explanation, folder / record.path.stem)
        files += [written.maps_png, written.matches_png]
    return files


# ------------------------------------------------------------------------------------ verdict


def write_verdict(scored: dict[str, dict[str, Any]], intervals: dict[str, Interval], text: dict[str, Any],
                  control: dict[str, Any]) -> list[str]:
    """Plain sentences computed from the numbers: what they show and what they do not."""
    base, fused, ctrl = (scored[k]["map50"] for k in ("baseline", "text", "control"))
    tb, cb, tc = intervals["text_vs_baseline"], intervals["control_vs_baseline"], intervals["text_vs_control"]
    lines = [
        f"The baseline detector reached mAP@0.5 {fmt_value(base)} on the {scored['baseline']['num_images']} "
        f"synthetic validation images.",
        f"With the class descriptions, the progressive phases end at {fmt_value(fused)} "
        f"({fmt_delta(tb.observed)}; 95% interval {fmt_delta(tb.low)} to {fmt_delta(tb.high)}). "
        f"The control, same head and schedule with random text, ends at {fmt_value(ctrl)} ({fmt_delta(cb.observed)}).",
    ]
    if not math.isfinite(tc.observed):
        lines.append("The text and control runs cannot be compared: a metric is undefined.")
    elif tc.excludes_zero and tc.observed > 0:
        lines.append(f"The descriptions add {fmt_delta(tc.observed)} beyond what extra capacity and training give "
                     f"(interval {fmt_delta(tc.low)} to {fmt_delta(tc.high)} excludes zero): on this data the text "
                     f"itself helped.")
    elif tc.excludes_zero:
        lines.append(f"The text run is {fmt_delta(tc.observed)} below the control (interval {fmt_delta(tc.low)} to "
                     f"{fmt_delta(tc.high)}): on this data the descriptions did not help, random vectors did better.")
    else:
        lines.append(f"Text vs control: {fmt_delta(tc.observed)}, interval {fmt_delta(tc.low)} to {fmt_delta(tc.high)} "
                     f"includes zero, so this run does not show that the descriptions themselves helped; any gain "
                     f"over the baseline is as well explained by the extra head and training.")
    if tb.excludes_zero and tb.observed > 0:
        lines.append("The gain of the text run over the baseline is larger than the resampling noise.")
    elif not tb.excludes_zero:
        lines.append("The text run's change from the baseline is within the resampling noise of this validation set.")
    a, b = PAIR
    if all(n in scored["baseline"]["per_class"] for n in PAIR):
        before = confusion_pair(scored["baseline"], scored["text"], a, b)
        after_ctrl = confusion_pair(scored["baseline"], scored["control"], a, b)
        lines.append(f"Cracks called scratches: {before.a_as_b_before} with the baseline, {before.a_as_b_after} "
                     f"with text fusion, {after_ctrl.a_as_b_after} with the control; scratches called cracks: "
                     f"{before.b_as_a_before} / {before.b_as_a_after} / {after_ctrl.b_as_a_after}.")
    final = text.get("final") or {}
    lines.append(f"The run's final choice is {final.get('phase', 'n/a')}: {final.get('reason', '')}.")
    lines.append("What this does not show: synthetic images, one seed, a ~1 M-parameter model trained for minutes. "
                 "It shows the machinery working end to end and measures the effect on this data only; on real "
                 "images the size and even the sign of the text effect must be measured the same way (text vs control).")
    return lines


def _demo_summary(plan: DemoPlan, baseline: dict[str, Any], text: dict[str, Any], control: dict[str, Any],
                  scored: dict[str, dict[str, Any]], intervals: dict[str, Interval], verdict: list[str],
                  fused_name: str) -> dict[str, Any]:
    return {
        "plan": plan.__dict__,
        "baseline_run": baseline,
        "text_run": text,
        "control_run": control,
        "validation": {k: {"map50": v["map50"], "map": v["map"]} for k, v in scored.items()},
        "intervals": {k: v.to_dict() for k, v in intervals.items()},
        "explained_with": fused_name,
        "verdict": verdict,
    }


# ------------------------------------------------------------------------------------ report


def _model_rows(text: dict[str, Any], control: dict[str, Any], out: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, metrics) of the baseline, each text phase's best and each control phase's best."""
    rows = [("baseline", _metrics(Path(text["baseline"]["checkpoint"])))]
    for run, label in ((text, "text"), (control, "control")):
        for phase in PHASES:
            if phase in run["phases"]:
                rows.append((f"{label} {phase}", _metrics(Path(run["phases"][phase]["best_dir"]))))
    return rows


def _table(models: list[tuple[str, dict[str, Any]]]) -> list[dict[str, str]]:
    names = list(models[0][1]["per_class"])
    rows = []
    for label, metrics in models:
        row = {"model": label, "mAP@0.5": fmt_value(metrics["map50"]), "mAP@0.5:0.95": fmt_value(metrics["map"])}
        row.update({name: fmt_value(metrics["per_class"][name]["ap50"]) for name in names})
        rows.append(row)
    return rows


def _gates(run: dict[str, Any]) -> str:
    return "\n".join(f"- after {g['after']}: {g['reason']}" for g in run.get("gates", [])) or "- (no gate applied)"


def _report(out: Path, val, scored, text, control, intervals, verdict, explain_files, detections):
    report = out / "report"
    models = _model_rows(text, control, out)
    bars = plot_ap_bars_many(models, report / "plots" / "ap50_all_models.png",
                             title="AP@0.5 per class: baseline, text phases, control phases")
    interval_rows = [
        {"comparison": f"{iv.a} - {iv.b}", "mAP@0.5 difference": fmt_delta(iv.observed),
         "95% interval": f"{fmt_delta(iv.low)} .. {fmt_delta(iv.high)}", "draws": str(iv.draws)}
        for iv in intervals.values()
    ]
    intro = [
        Section("Verdict", "\n".join(f"- {line}" for line in verdict)),
        Section("Baseline, phases and control",
                "Best checkpoint of each phase on the validation images (EMA weights). Text: the class descriptions "
                "embedded by MiniLM; control: the same head and schedule with random unit vectors as 'text'.",
                table=_table(models), images=[(bars, "AP@0.5 per class, every model")]),
        Section("Is the difference real?",
                "Paired bootstrap over validation images (the same resample for every model in a draw).",
                table=interval_rows),
        Section("Gate decisions", f"Text run:\n{_gates(text)}\n\nControl run:\n{_gates(control)}"),
    ]
    explain = [Section("Text-visual explanations",
                       "For validation images holding a crack and a scratch: the encoder's features projected into "
                       "the text space and compared with each class's description (one panel per class), and for "
                       "each detection its similarity to every class description.",
                       images=[(p, p.parent.name) for p in explain_files])]
    grid = [{"image": load_image(r.path), "detections": detections["text"].get(r.id),
             "gt": val.training_targets(r.id), "title": r.file_name} for r in val.images[:8]]
    training = sorted((out / "text").glob("*/metrics.jsonl"))
    return build_report(
        report, scored["text"], baseline=scored["baseline"], labels=("baseline", "text fusion"),
        pair=PAIR, training=training, images=grid, class_names=list(val.class_names),
        title="defectfusion demo: text fusion on synthetic industrial defects",
        intro_sections=intro, extra_sections=explain,
    )
