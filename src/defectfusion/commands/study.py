"""``defectfusion study``: did the descriptions help, by how much, and is it real?

One baseline (the config's checkpoint), then every arm x seed (x training fraction) as an
ordinary, resumable training run (:mod:`.study_plan`, :mod:`.study_launch`). Every run selects on
the validation images as any run does; the study scores each run's final model on the test
images (which selected nothing), resamples seeds and test images (:mod:`~..engine.study_stats`),
and states a verdict by a rule written before the numbers (:mod:`~..engine.verdict`)::

    <out>/study.json             the plan: arms, seeds, fractions, the rule, one config per run
    <out>/configs/*.yaml         each run's training config
    <out>/runs/<arm>/<fraction>/seed<k>/   an ordinary run folder
    <out>/baseline/              the starting checkpoint scored on the test images
    <out>/summary.json           per arm means and sds, pairwise intervals, resolution, verdict
    <out>/report/                report.md + report.html with the forest plot, per-class deltas, ...

Without a test split the validation images are used and every table says they selected the models
("optimistic").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..data.coco import CocoIndex, load_coco
from ..data.descriptions import resolve_pair
from ..engine.bootstrap import image_draws, resample
from ..engine.evaluator import write_metrics
from ..engine.predictor import Predictor, detections_to_coco
from ..engine.results_file import read_results_file
from ..engine.study_stats import compare_arms, hierarchical_draws, resolution, summarize_arm
from ..engine.validation import evaluate_on_index
from ..engine.verdict import decide, rule_text
from ..errors import ConfigError
from ..io import atomic_write_json, read_json
from ..report.study import write_study_report
from ..structures import Detections
from .explain import explain
from .study_launch import SlurmOptions, run_local, run_slurm
from .study_plan import BASE_ARMS, StudyPlan, StudyRun, fraction_label, plan_study, read_plan, same_plan, write_plan


@dataclass
class StudyResult:
    out: Path
    plan: StudyPlan
    summary: dict[str, Any]
    report_md: Path
    report_html: Path


def _score(
    checkpoint: str | os.PathLike, index: CocoIndex, folder: Path, prefix: str, progress: bool
) -> tuple[dict[str, Any], dict[int, Detections]]:
    """Metrics and detections of a checkpoint on ``index``, cached as ``<prefix>_metrics/results.json``."""
    metrics_path, results_path = folder / f"{prefix}metrics.json", folder / f"{prefix}results.json"
    if not (metrics_path.is_file() and results_path.is_file()):
        predictor = Predictor.from_checkpoint(checkpoint)
        metrics, kept = evaluate_on_index(
            predictor,
            index,
            keep=[r.id for r in index.images],
            progress=progress,
            desc=f"score {Path(checkpoint).parent.name}/{Path(checkpoint).name}",
        )
        write_metrics(metrics, metrics_path)
        atomic_write_json(results_path, detections_to_coco(kept, index), indent=None)
    return _read_scored(metrics_path, results_path, index)


def _read_scored(metrics_path: Path, results_path: Path, index: CocoIndex):
    detections = read_results_file(results_path, [r.id for r in index.images], list(index.label_to_category_id))
    return read_json(metrics_path, "metrics file"), detections


def _run_scores(run: StudyRun, index: CocoIndex, on_test: bool, progress: bool):
    folder = Path(run.folder)
    if on_test:
        test = read_json(folder / "summary.json", "run summary")["test"]["final"]
        return _read_scored(Path(test["results"]).with_name("final_metrics.json"), Path(test["results"]), index)
    return _score(folder / "final", index, folder, "study_val_", progress)


def _statistics(plan: StudyPlan, index: CocoIndex, on_test: bool, draws: int, pair, progress: bool) -> dict:
    base_metrics, base_dets = _score(plan.baseline, index, Path(plan.out) / "baseline", "", progress)
    scored = {run.key: _run_scores(run, index, on_test, progress) for run in plan.runs}
    resampled = resample(
        index.to_coco_dict(),
        {"baseline": base_dets, **{k: d for k, (_, d) in scored.items()}},
        image_draws([r.id for r in index.images], draws, seed=0),
    )
    names = list(index.class_names)
    per_fraction = {}
    for fraction in plan.fractions:
        runs = {arm: [r for r in plan.runs if r.arm == arm and r.fraction == fraction] for arm in plan.arms}
        summaries = {"baseline": summarize_arm("baseline", [base_metrics], pair)}
        summaries.update({arm: summarize_arm(arm, [scored[r.key][0] for r in rs], pair) for arm, rs in runs.items()})
        arm_draws = hierarchical_draws(
            {"baseline": [resampled["baseline"]], **{a: [resampled[r.key] for r in rs] for a, rs in runs.items()}},
            seed=int(fraction * 1000),
        )
        pairs = [(a, "baseline") for a in plan.arms]
        pairs += [(a, b) for i, a in enumerate(plan.arms) for b in plan.arms[i + 1 :]]
        comparisons = {(a, b): compare_arms(summaries[a], summaries[b], arm_draws, names, pair) for a, b in pairs}
        verdict = decide(comparisons, fraction_label(fraction) if len(plan.fractions) > 1 else "")
        key = ("text", "baseline") if ("text", "baseline") in comparisons else pairs[0]
        per_fraction[fraction_label(fraction)] = {
            "fraction": fraction,
            "arms": {a: s.to_dict() for a, s in summaries.items()},
            "comparisons": [c.to_dict() for c in comparisons.values()],
            "resolution": resolution(comparisons[key].map50, len(index.images)),
            "verdict": {"outcome": verdict.outcome, "sentences": verdict.sentences},
            "runs": {a: [r.folder for r in rs] for a, rs in runs.items()},
            "skipped_phases": {r.arm: r.skipped_phases for rs in runs.values() for r in rs if r.skipped_phases},
        }
    return per_fraction


def _map_quality(per_fraction: dict, index, folder: Path, images: int, progress: bool) -> dict[str, Any]:
    """Per fused arm (the full training set's first seed): each map kind's overall quality on ``index``."""
    entry = per_fraction[max(per_fraction, key=lambda k: per_fraction[k]["fraction"])]
    quality: dict[str, Any] = {}
    for arm, folders in entry["runs"].items():
        model = Path(folders[0]) / "final"
        if arm == "baseline" or not (model / "config.json").is_file() or not _is_fused(model):
            continue
        if progress:
            print(f"study: explaining {images} images with {arm} ({model})")
        result = explain(
            model, None, folder / arm, annotations=index.annotations_file, images_dir=index.images_dir, limit=images
        )
        quality[arm] = {kind: q.overall for kind, q in result.quality.items()}
    return quality


def _is_fused(model: Path) -> bool:
    config = read_json(model / "config.json", "model config")
    return bool((config.get("defectfusion") or {}).get("fusion"))


def run_study(
    config: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    arms: Sequence[str] = BASE_ARMS,
    seeds: int = 2,
    fractions: Sequence[float] = (1.0,),
    descriptions: Sequence[str] = (),
    parallel: int = 1,
    launcher: str = "local",
    resume: bool = False,
    draws: int = 200,
    slurm: SlurmOptions | None = None,
    explain_images: int = 0,
    progress: bool = True,
) -> StudyResult:
    """Plan (or resume) a study in ``out``, train what is missing, score on test, write the report.

    ``explain_images``: explain that many scoring images with the first seed's final model of
    every fused arm and report how well each map kind points at the boxes (0: not done).
    """
    out = Path(out).resolve()  # the plan and the runs' configs name absolute paths
    saved = out / "study.json"
    if config is None:
        if not (resume and saved.is_file()):
            raise ConfigError("give a training config for the study, or resume a study folder")
        plan = read_plan(out)
    else:
        cfg: Config = load_config(config, overrides)
        plan = plan_study(cfg, out, arms=arms, seeds=seeds, fractions=fractions, descriptions=descriptions)
        if saved.is_file():
            if not resume:
                raise ConfigError(f"{out} already holds a study: resume it to continue, or choose another folder")
            if not same_plan(read_plan(out), plan):
                raise ConfigError(
                    f"{saved} plans another study (arms, seeds, fractions or config differ): resume it "
                    f"with the same arguments, or use another folder"
                )
    write_plan(plan, rule_text("random" in plan.arms))
    missing = [r for r in plan.runs if not r.finished(plan.test is not None)]
    if progress:
        print(
            f"study {plan.name}: {len(plan.runs)} runs ({len(plan.runs) - len(missing)} done), arms "
            f"{', '.join(plan.arms)} x {plan.seeds} seed(s) x fractions {plan.fractions}"
        )
    if missing:
        if launcher == "local":
            run_local(missing, out / "logs", parallel, progress)
        elif launcher == "slurm":
            run_slurm(missing, out / "slurm", slurm or SlurmOptions(), progress)
        else:
            raise ConfigError(f"launcher must be local or slurm, got {launcher!r}")

    base_cfg = load_config(plan.runs[0].config)
    on_test = plan.test is not None
    index = load_coco(plan.test) if on_test else load_coco(base_cfg.data.val.annotations, base_cfg.data.val.images)
    pair = resolve_pair(
        None,
        list(index.class_names),
        [base_cfg.fusion.descriptions, *plan.descriptions.values()],
        base_cfg.data.confusable_pair,
    )
    per_fraction = _statistics(plan, index, on_test, draws, pair, progress)
    summary = {
        "name": plan.name,
        "rule": rule_text("random" in plan.arms),
        "scored_on": {
            "annotations": str(index.annotations_file),
            "images": len(index.images),
            "test": on_test,
            "note": None
            if on_test
            else "no test split: the validation images selected these models, so every number here is optimistic",
        },
        "baseline": plan.baseline,
        "pair": list(pair) if pair else None,
        "draws": draws,
        "fractions": per_fraction,
    }
    if explain_images > 0:
        summary["map_quality"] = _map_quality(per_fraction, index, out / "explain", explain_images, progress)
    atomic_write_json(out / "summary.json", summary)
    md, html = write_study_report(out / "report", summary, list(index.class_names))
    if progress:
        for entry in per_fraction.values():
            for sentence in entry["verdict"]["sentences"]:
                print(sentence)
        print(f"report: {html}")
    return StudyResult(out, plan, summary, md, html)
