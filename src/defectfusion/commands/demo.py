"""`defectfusion demo`: the whole phase-2 question on a laptop CPU, answered by a study.

1. synthetic six-class defect data with train / val / test splits (``data/synthetic``);
2. the baseline: the tiny DEIMv2 shipped with the package (:mod:`.demo_baseline`: trained by the
   ``scratch_cpu`` recipe on these very images, its card says how), or with ``train_baseline`` one
   trained from scratch here (``<out>/baseline``), selected on validation;
3. a study (:mod:`.study`) from that baseline: the three progressive phases with the offline
   MiniLM descriptions (``text``), with the descriptions on the wrong classes (``shuffled``), with
   random vectors as text (``random``) and the same training without a fusion head
   (``continued``), each with several seeds, runs side by side;
4. every final model scored on the test images (which selected nothing), intervals over seeds and
   test images, a verdict by the rule stated before the numbers, text-visual explanation maps and
   the report.

Re-running with the same ``--out`` resumes where a killed demo stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import dump_config, load_config
from ..data.coco import load_coco
from ..data.synthetic import generate_synthetic_dataset
from ..engine.training.progressive import run_training
from ..errors import ConfigError, DefectFusionError
from ..io import atomic_write_json, atomic_write_text, read_json
from ..structures import Scored
from .demo_baseline import DATA, baseline_overrides, read_card, shipped_baseline
from .demo_report import demo_sections
from .explain import ExplainResult, explain
from .study import model_to_explain, run_study
from .study_plan import BASE_ARMS

ARMS = BASE_ARMS
BASELINE_RECIPE = "scratch_cpu"
PHASES = ("phase1", "phase2", "phase3")


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is."""

    train_images: int
    val_images: int
    test_images: int
    image_size: int
    baseline_epochs: int
    phase_epochs: tuple[int, int, int]
    seeds: int
    explain_images: int  # test images explained and scored (map quality)
    bootstrap_draws: int


FULL = DemoPlan(DATA["train"], DATA["val"], DATA["test"], DATA["size"], 12, (1, 1, 1), 3, 24, 2000)
# The same steps and files in a couple of minutes (the test suite runs it; two seeds, which its
# report says cost it); its 128 px baseline is trained here, in two epochs.
QUICK = DemoPlan(32, 16, 16, 128, 2, (1, 1, 1), 2, 3, 2000)


CAVEAT = (
    "What this does not show: synthetic images and a ~1 M-parameter model trained for minutes. It shows the "
    "machinery working end to end and measures the effect on this data only; on real images the size and even "
    "the sign of the text effect must be measured the same way."
)


class DemoError(DefectFusionError):
    """A step of the demo failed (the message says which and where its log is)."""


@dataclass
class DemoResult:
    out: Path
    report_md: Path
    report_html: Path
    summary: dict[str, Any]


def demo_overrides(data: Path, plan: DemoPlan, cache_dir: Path | None = None, workers: int = 1) -> dict[str, list[str]]:
    """Overrides of the packaged configs: the baseline run's (``scratch_cpu``, over ``workers`` processes),
    and the study's base config (``demo``; its ``model.checkpoint``, the baseline, is added later)."""
    size = f"model.image_size=[{plan.image_size}, {plan.image_size}]"
    study = [
        f"data.train.annotations={data / 'train' / 'annotations.json'}",
        f"data.val.annotations={data / 'val' / 'annotations.json'}",
        size,
        *(f"phases.{p}.epochs={e}" for p, e in zip(PHASES, plan.phase_epochs, strict=True)),
        *([f"fusion.cache_dir={cache_dir}"] if cache_dir is not None else []),
        "name=demo",
        f"order=[{', '.join(PHASES)}]",
        f"data.test.annotations={data / 'test' / 'annotations.json'}",
        "train.tensorboard=false",
    ]
    baseline = [*baseline_overrides(data, workers), size, f"phases.baseline.epochs={plan.baseline_epochs}"]
    return {"baseline": baseline, "study": study}


def default_workers() -> int:
    """Processes side by side (the baseline's data-parallel ranks, the study's runs): one per core, at most two."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(2, cores))


# Children of the demo: one thread each, and no advice meant for GPU clusters in the output.
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TORCH_CPP_LOG_LEVEL": "ERROR", "LOGLEVEL": "ERROR"}


def _train_baseline(overrides: list[str], out: Path, progress: bool, workers: int) -> dict[str, Any]:
    """The baseline from scratch by the ``scratch_cpu`` recipe, data-parallel over ``workers``
    single-threaded processes (torchrun); ``overrides`` already split the batch over them.

    On two cores, two processes on half a batch each train this model ~1.2x faster than one
    process with two threads (its many small operations do not split well over threads).
    """
    if (out / "baseline" / "result.json").is_file() and (out / "summary.json").is_file():
        return read_json(out / "summary.json", "the baseline run's summary")  # finished before
    resume = (out / "config.yaml").is_file()
    if workers <= 1:
        return run_training(load_config(BASELINE_RECIPE, overrides), out, resume=resume, progress=progress)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={workers}",
        "-m",
        "defectfusion",
        "train",
        BASELINE_RECIPE,
        "--out",
        str(out),
    ]
    cmd += [arg for o in overrides for arg in ("-o", o)]
    cmd += (["--resume"] if resume else []) + ([] if progress else ["--quiet"])
    log = out.parent / "baseline.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as sink:
        code = subprocess.run(
            cmd,
            env={**os.environ, **_CHILD_ENV},
            check=False,
            stdout=None if progress else sink,
            stderr=None if progress else subprocess.STDOUT,
        ).returncode
    if code != 0 or not (out / "summary.json").is_file():
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if not progress else []
        where = f"{lines[-1] if lines else 'no output'} (whole log: {log})" if not progress else "see above"
        raise DemoError(f"the baseline run stopped with exit code {code}: {where}; run the demo again to resume it")
    return read_json(out / "summary.json", "the baseline run's summary")


def _explanations(checkpoint: Path, test_annotations: Path, folder: Path, count: int) -> ExplainResult:
    """Explain the first ``count`` test images, score every map kind against their boxes and the
    detections-only control, and run the deletion test on every one of them."""
    return explain(
        checkpoint, None, folder, annotations=test_annotations, limit=count, max_detections=6, faithfulness=count
    )


def _explained_run(study: dict[str, Any]) -> tuple[Path, str]:
    """The text arm's model to explain, chosen by seed order before any score, so that its maps can be
    scored on the test images without those images having picked it."""
    entry = next(iter(study["fractions"].values()))
    chosen = model_to_explain(entry["runs"]["text"])
    if chosen is None:
        raise DemoError("no text run trained a fused model: nothing to explain (see the study's run logs)")
    return chosen


def run_demo(
    out: str | Path = "runs/demo",
    quick: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    train_baseline: bool = False,
) -> DemoResult:
    """Run the demo into ``out`` and return where the report is.

    ``workers``: processes side by side (default :func:`default_workers`): the baseline's
    data-parallel ranks, then the study's runs; 1 trains everything in this process's children one
    at a time. ``train_baseline``: train the baseline here (12 epochs, minutes) instead of starting
    from the one shipped with the package (the quick demo always trains its own).
    """
    out = Path(out).resolve()  # every config and run folder of the demo names absolute paths
    plan = QUICK if quick else FULL
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"demo: workers must be at least 1, got {workers}")
    say = print if progress else (lambda *_a, **_k: None)
    out.mkdir(parents=True, exist_ok=True)

    data = out / "data"
    if not (data / "test" / "annotations.json").is_file():
        say(
            f"[1/4] synthetic data: {plan.train_images} train + {plan.val_images} val + {plan.test_images} test "
            f"images, {plan.image_size} px"
        )
        generate_synthetic_dataset(
            data,
            train=plan.train_images,
            val=plan.val_images,
            test=plan.test_images,
            size=plan.image_size,
            seed=DATA["seed"],
            progress=progress,
        )
    runs = demo_overrides(data, plan, Path(cache_dir) if cache_dir else None, workers)
    if train_baseline or quick:  # the quick demo's 128 px images need their own baseline
        how = f"{workers} data-parallel processes" if workers > 1 else "one process"
        say(f"[2/4] the baseline: a tiny DEIMv2 trained from scratch ({how}), selected on the validation images")
        baseline = _train_baseline(runs["baseline"], out / "baseline", progress, workers)
        baseline_dir = Path(baseline["phases"]["baseline"]["best_dir"]).resolve()
        baseline_said = f"a tiny DEIMv2 trained here from scratch by the `{BASELINE_RECIPE}` recipe"
    else:
        baseline_dir = shipped_baseline()
        card = read_card(baseline_dir)
        baseline = {"shipped": str(baseline_dir), "card": card}
        baseline_said = (
            f"the tiny DEIMv2 shipped with the package, trained from scratch by the `{card['recipe']}` recipe on "
            f"these training images (validation mAP@0.5 {Scored.from_dict(card['val']).map50:.3f}; its model card, "
            f"{baseline_dir / 'MODEL_CARD.md'}, gives the commands)"
        )
        say(f"[2/4] the baseline: {baseline_said}")
    say(
        f"[3/4] the study: arms {', '.join(ARMS)} x {plan.seeds} seeds, phases 1-3 from the baseline, "
        f"{workers} run(s) at a time (logs: {out / 'study' / 'logs'})"
    )
    study_cfg = out / "study_config.yaml"
    config = load_config("demo", [*runs["study"], f"model.checkpoint={baseline_dir}"])
    atomic_write_text(study_cfg, dump_config(config))
    study = run_study(
        study_cfg,
        out / "study",
        arms=ARMS,
        seeds=plan.seeds,
        parallel=workers,
        draws=plan.bootstrap_draws,
        resume=(out / "study" / "study.json").is_file(),
        progress=progress,
    ).summary

    say("[4/4] explanation maps and the report")
    val = load_coco(data / "val" / "annotations.json")
    fused, why = _explained_run(study)
    explained = _explanations(
        fused, data / "test" / "annotations.json", out / "report" / "explain", plan.explain_images
    )
    verdict = [
        *next(iter(study["fractions"].values()))["verdict"]["sentences"],
        CAVEAT,
    ]
    summary = {
        "plan": dict(plan.__dict__),
        "baseline_run": baseline,
        "study": study,
        "verdict": verdict,
        "explained_with": str(fused),
        "explained_why": why,
    }
    atomic_write_json(out / "summary.json", summary)
    summary["map_quality"] = {k: q.to_dict() for k, q in explained.quality.items()}
    summary["map_comparisons"] = {k: c.to_dict() for k, c in explained.comparisons.items()}
    summary["map_faithfulness"] = explained.faithfulness.to_dict() if explained.faithfulness else None
    atomic_write_json(out / "summary.json", summary)
    md, html = demo_sections(out, study, list(val.class_names), verdict, explained, why, baseline_said)
    say(f"report: {html}")
    return DemoResult(out, md, html, summary)
