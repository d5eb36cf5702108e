"""``defectfusion study``: did the descriptions help, by how much, and is it real?

One baseline (the config's checkpoint), then every arm x seed (x training fraction) as an
ordinary, resumable training run (:mod:`.study_plan`, :mod:`.study_launch`). Every run selects on
the validation images as any run does; the study scores each run's final model on the test
images (which selected nothing), resamples seeds and test images (:mod:`~..engine.study.study_stats`),
and states a verdict by a rule written before the numbers (:mod:`~..engine.study.verdict`)::

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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, load_config
from ..data.coco import CocoIndex, load_coco
from ..data.descriptions import resolve_pair
from ..engine.evaluation.bootstrap import Resampled, image_draws, resample
from ..engine.evaluation.evaluator import write_metrics
from ..engine.evaluation.results_file import read_results_file
from ..engine.evaluation.validation import evaluate_on_index
from ..engine.prediction.predictor import Predictor, detections_to_coco
from ..engine.study.study_analysis import RunInfo, analyse_fraction
from ..engine.study.study_stats import TEXT, RunScores
from ..engine.study.verdict import rule_text
from ..engine.training.run_record import read_run_record
from ..engine.training.tracking import StudyTracker
from ..errors import ConfigError, DataError
from ..io import atomic_write_json
from ..models.checkpoint import has_fusion_head
from ..report.study import write_study_report
from ..report.values import load_metrics
from ..structures import Detections, Metrics
from .explain import explain
from .preflight import check_plan
from .study_launch import SlurmOptions, run_local, run_slurm
from .study_plan import (
    BASE_ARMS,
    BASELINE_ARM,
    StudyPlan,
    StudyRun,
    check_same_plan,
    fraction_label,
    plan_study,
    read_plan,
    with_speed_settings,
    write_plan,
)


@dataclass
class StudyResult:
    out: Path
    plan: StudyPlan
    summary: dict[str, Any]
    report_md: Path
    report_html: Path


def _score(
    checkpoint: str | os.PathLike, index: CocoIndex, folder: Path, prefix: str, progress: bool
) -> tuple[Metrics, dict[int, Detections]]:
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
    return load_metrics(metrics_path), detections


def _run_scores(run: StudyRun, index: CocoIndex, on_test: bool, progress: bool):
    folder = Path(run.folder)
    if on_test:
        record = read_run_record(folder)
        if record is None or record.test_results is None:
            raise DataError(f"{folder}: the run scored no test split (summary.json has no test entry); train it again")
        return _read_scored(record.test_metrics, record.test_results, index)
    return _score(folder / "final", index, folder, "study_val_", progress)


def _run_info(run: StudyRun, map50: float | None) -> RunInfo:
    record = read_run_record(run.folder)
    if record is None:
        raise DataError(f"{run.folder}: the run left no summary.json; run the study again with --resume")
    return RunInfo(
        run.key, run.arm, run.seed, run.folder, record.final_phase, record.final_reason, record.text_usage, map50
    )


def _check_identity(name: str, metrics: Metrics, identity: Resampled, where: Path) -> None:
    """The bootstrap's identity draw must give what the evaluator wrote: the results file and the metrics
    file then describe the same detections."""
    for key, stored, drawn in (("map50", metrics.map50, identity.map50[0]), ("map", metrics.map, identity.map[0])):
        same = (stored is None and not np.isfinite(drawn)) or (stored is not None and abs(stored - drawn) <= 1e-6)
        if not same:
            raise DataError(
                f"{name}: {key} from the results in {where} is {drawn:.6f}, its metrics file says {stored}: the two "
                f"files describe different detections. Delete {where} to score the model again"
            )


def _subset_size(run: StudyRun, class_names: list[str], own_baseline: bool) -> dict[str, Any]:
    train = run.load().data.train
    index = load_coco(train.annotations, train.images)
    boxes = np.bincount([a.label for anns in index.annotations.values() for a in anns], minlength=len(class_names))
    return {
        "images": len(index.images),
        "boxes": dict(zip(class_names, boxes.tolist(), strict=True)),
        "own_baseline": own_baseline,
    }


def _statistics(plan: StudyPlan, index: CocoIndex, on_test: bool, draws: int, pair, progress: bool) -> dict[str, Any]:
    base_metrics, base_dets = _score(plan.baseline, index, Path(plan.out) / "baseline", "", progress)
    scored = {run.key: _run_scores(run, index, on_test, progress) for run in plan.runs}
    gt = index.to_coco_dict()
    detections = {"baseline": base_dets, **{k: d for k, (_, d) in scored.items()}}
    ids = [r.id for r in index.images]
    identity = resample(gt, detections, np.array([sorted(ids)]))
    metrics = {"baseline": base_metrics, **{k: m for k, (m, _) in scored.items()}}
    for name, values in identity.items():
        folder = Path(plan.out) / "baseline" if name == "baseline" else Path(plan.run(name).folder)
        _check_identity(name, metrics[name], values, folder)
    resampled = resample(gt, detections, image_draws(ids, draws, seed=0), progress=progress)
    names = list(index.class_names)
    per_fraction = {}
    for fraction in plan.fractions:
        label = fraction_label(fraction)
        own = plan.own_baseline(fraction)
        key = own.key if own is not None else "baseline"
        baseline = RunScores(key, metrics[key], resampled[key])
        runs = {arm: [r for r in plan.runs if r.arm == arm and r.fraction == fraction] for arm in plan.arms}
        arms = {arm: [RunScores(r.key, metrics[r.key], resampled[r.key]) for r in rs] for arm, rs in runs.items()}
        result = analyse_fraction(
            label,
            fraction,
            arms,
            baseline,
            {arm: [_run_info(r, metrics[r.key].map50) for r in rs] for arm, rs in runs.items()},
            names,
            pair,
            len(index.images),
            verdict_label=label if len(plan.fractions) > 1 else "",
            skipped_phases={r.arm: r.skipped_phases for rs in runs.values() for r in rs if r.skipped_phases},
            subset=_subset_size(runs[plan.arms[0]][0], names, own is not None) if fraction < 1 else None,
        )
        per_fraction[label] = {**result.to_dict(), "baseline": own.folder if own is not None else plan.baseline}
    return per_fraction


def model_to_explain(runs: Sequence[dict[str, Any]]) -> tuple[Path, str] | None:
    """The fused model of an arm to explain, chosen by seed order before any score, and why.

    The first seed whose final model is fused; when every seed kept its (plain) baseline, the first
    seed's last fused phase best, which validation did not prefer to the baseline (said so).
    """
    for info in runs:
        final = Path(info["folder"]) / "final"
        if has_fusion_head(final):
            return (
                final,
                f"seed {info['seed']}'s final model (the first seed with a fused one; chosen before any score)",
            )
    if not runs:
        return None
    record = read_run_record(runs[0]["folder"])
    for name, best in reversed(list(record.phase_bests.items()) if record else []):
        if has_fusion_head(best):
            why = (
                f"seed {runs[0]['seed']}'s {name} best (every seed's final model is its baseline, which has no "
                f"text; validation did not prefer this one to the baseline)"
            )
            return best, why
    return None


def _map_quality(per_fraction: dict, index, folder: Path, images: int, progress: bool) -> dict[str, Any]:
    """Per fused arm (:func:`model_to_explain` of the full training set's runs): each map kind's overall
    quality on ``index``, against the detections-only control; the text arm's also by the deletion test."""
    entry = per_fraction[max(per_fraction, key=lambda k: per_fraction[k]["fraction"])]
    quality: dict[str, Any] = {}
    for arm, infos in entry["runs"].items():
        chosen = model_to_explain(infos)
        if chosen is None:
            continue
        model, why = chosen
        if progress:
            print(f"study: explaining {images} images with {arm}: {why}")
        result = explain(
            model,
            None,
            folder / arm,
            annotations=index.annotations_file,
            images_dir=index.images_dir,
            limit=images,
            faithfulness=images if arm == TEXT else 0,  # a few hundred forward passes an image: the text arm's only
        )
        faithful = result.faithfulness.to_dict()["kinds"] if result.faithfulness else {}
        quality[arm] = {
            kind: {
                **q.overall,
                "vs_control": result.comparisons[kind].to_dict()["vs_control"],
                "class_specificity": result.comparisons[kind].to_dict()["class_specificity"],
                "faithfulness": faithful.get(kind),
            }
            for kind, q in result.quality.items()
        }
    return quality


def _tracker(out: Path, cfg: Config) -> StudyTracker:
    """The study's parent MLflow run (nothing when ``train.mlflow`` is not set)."""
    experiment = cfg.train.mlflow_experiment or cfg.name  # the runs' configs carry the study's experiment
    return StudyTracker(cfg.train.mlflow, experiment, out, cfg.name)


SANE_BASELINE_MAP50 = 0.05  # below: the detector finds almost nothing, arms would differ by noise around 0


def _scoring_split(plan: StudyPlan, base_cfg: Config) -> tuple[CocoIndex, bool]:
    if plan.test is not None:
        return load_coco(plan.test), True
    return load_coco(base_cfg.data.val.annotations, base_cfg.data.val.images), False


def _warn_on_a_weak_baseline(plan: StudyPlan, index: CocoIndex, on_test: bool, progress: bool) -> None:
    """Score the baseline once (every run and the statistics reuse it) and say so when it finds next to nothing."""
    metrics, _ = _score(plan.baseline, index, Path(plan.out) / "baseline", "", progress)
    value = metrics.map50
    if value is None or value < SANE_BASELINE_MAP50:
        shown = "undefined" if value is None else f"{value:.4f}"
        print(
            f"warning: the baseline {plan.baseline} scores mAP@0.5 {shown} on the {'test' if on_test else 'val'} "
            f"images (below {SANE_BASELINE_MAP50}): it finds almost nothing, so the arms will differ by noise around "
            f"0. Train the baseline longer first (defectfusion train scratch_cpu ... --epochs N)."
        )


def run_study(
    config: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    arms: Sequence[str] = BASE_ARMS,
    seeds: int = 3,
    fractions: Sequence[float] = (1.0,),
    descriptions: Sequence[str] = (),
    parallel: int = 1,
    launcher: str = "local",
    resume: bool = False,
    draws: int = 2000,
    slurm: SlurmOptions | None = None,
    explain_images: int = 0,
    fraction_baselines: bool = False,
    progress: bool = True,
) -> StudyResult:
    """Plan (or resume) a study in ``out``, train what is missing, score on test, write the report.

    ``explain_images``: explain that many scoring images with the first seed's final model of
    every fused arm and report how well each map kind points at the boxes (0: not done).
    ``fraction_baselines``: train a baseline on each training fraction below 1 (the config's
    ``baseline`` phase), from which that fraction's arms start (default: every arm starts from
    ``model.checkpoint``, trained on all the images: the curve then measures fine-tuning data).
    """
    out = Path(out).resolve()  # the plan and the runs' configs name absolute paths
    saved = out / "study.json"
    if config is None:
        if not (resume and saved.is_file()):
            raise ConfigError("give a training config for the study, or resume a study folder")
        plan = with_speed_settings(read_plan(out), overrides)
    else:
        cfg: Config = load_config(config, overrides)
        parent = _tracker(out, cfg).start()
        plan = plan_study(
            cfg,
            out,
            arms=arms,
            seeds=seeds,
            fractions=fractions,
            descriptions=descriptions,
            mlflow_parent=parent,
            fraction_baselines=fraction_baselines,
        )
        if saved.is_file():
            if not resume:
                raise ConfigError(f"{out} already holds a study: resume it to continue, or choose another folder")
            check_same_plan(read_plan(out), plan)
    # every input any run would reject, before anything is written or trained
    check_plan(plan, device_here=launcher == "local")
    write_plan(plan, rule_text(plan.arms))
    base_cfg = plan.runs[0].load()
    index, on_test = _scoring_split(plan, base_cfg)
    missing = [r for r in plan.runs if not r.finished(plan.test is not None)]
    if progress:
        print(
            f"study {plan.name}: {len(plan.runs)} runs ({len(plan.runs) - len(missing)} done), arms "
            f"{', '.join(plan.arms)} x {plan.seeds} seed(s) x fractions {plan.fractions}"
        )
    if missing:
        _warn_on_a_weak_baseline(plan, index, on_test, progress)
        how_to_resume = f"defectfusion study --resume --out {out}"
        if launcher not in ("local", "slurm"):
            raise ConfigError(f"launcher must be local or slurm, got {launcher!r}")
        # the fractions' own baselines first: their arms start from them
        waves = [[r for r in missing if r.arm == BASELINE_ARM], [r for r in missing if r.arm != BASELINE_ARM]]
        for wave in (w for w in waves if w):
            if launcher == "local":
                run_local(wave, out / "logs", parallel, progress, resume=how_to_resume)
            else:
                run_slurm(wave, out / "slurm", slurm or SlurmOptions(), progress, resume=how_to_resume)

    pair = resolve_pair(
        None,
        list(index.class_names),
        [base_cfg.fusion.descriptions, *plan.descriptions.values()],
        base_cfg.data.confusable_pair,
    )
    with warnings.catch_warnings():  # undefined resamples are NaN by design; numpy need not say so
        warnings.simplefilter("ignore", RuntimeWarning)
        per_fraction = _statistics(plan, index, on_test, draws, pair, progress)
    split = "test" if on_test else "val"
    summary = {
        "name": plan.name,
        "rule": rule_text(plan.arms),
        "scored_on": {
            "annotations": str(index.annotations_file),
            "images": len(index.images),
            "split": split,
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
    _tracker(out, base_cfg).finish(summary, html)
    if progress:
        for entry in per_fraction.values():
            for sentence in [*entry["verdict"]["sentences"], *entry["notes"]]:
                print(sentence)
        print(f"report: {html}")
    return StudyResult(out, plan, summary, md, html)
