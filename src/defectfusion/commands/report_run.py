"""``defectfusion report``: the report of a training run folder (phases, gates, curves, final model)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_config
from ..data.coco import CocoIndex, load_coco
from ..data.descriptions import resolve_pair
from ..engine.evaluation.validation import evaluate_on_index
from ..engine.prediction.predictor import Predictor
from ..engine.training.run_record import entry_metrics_file
from ..errors import ConfigError, DataError, DefectFusionError
from ..io import read_json
from ..report.compare import compare_metrics, confusion_pair
from ..report.summary import Section
from ..report.values import MISSING, as_number, fmt_delta, fmt_value, load_metrics
from ..structures import Metrics, Scored
from .evaluate import EvaluationResult, configured_pair, write_outputs, write_report
from .grid import GRID_IMAGES, grid_ids, grid_items, predict_ids


def _run_descriptions(run: Path) -> list[Any]:
    """The descriptions the run trained with (for its confusable pair), if its config names them."""
    try:
        return [load_config(run / "config.yaml").fusion.descriptions]
    except DefectFusionError:
        return []


@dataclass
class RunReport:
    """The report of a training run folder."""

    run: Path
    summary: dict[str, Any]
    phase_rows: list[dict[str, str]]
    gate_rows: list[dict[str, str]]
    final_text: str
    result: EvaluationResult
    evaluated: list[str] = field(default_factory=list)  # which checkpoints had to be evaluated now


def _existing_metrics(candidates: Sequence[tuple[Path, Path | None]]) -> Metrics | None:
    """The first readable metrics file of ``(path, model file it must not be older than)`` candidates."""
    for path, model_file in candidates:
        if not path.is_file():
            continue
        if model_file is not None and model_file.exists() and path.stat().st_mtime < model_file.stat().st_mtime:
            continue  # written before the model was replaced (a resumed run chose another final model)
        try:
            return load_metrics(path)
        except DefectFusionError:
            continue
    return None


def _phase_rows(summary: dict[str, Any], baseline_map50: float | None) -> list[dict[str, str]]:
    rows = []
    start = Scored.from_dict(summary.get("start"))
    if start:
        rows.append(
            {
                "phase": "start",
                "epochs": MISSING,
                "best epoch": MISSING,
                "mAP@0.5": fmt_value(start.map50),
                "mAP@0.5:0.95": fmt_value(start.map),
                "Δ mAP@0.5": MISSING,
                "stopped because": f"the starting checkpoint ({start.source})",
                "time": MISSING,
            }
        )
    for name, ph in (summary.get("phases") or {}).items():
        m50 = as_number(ph.get("best_map50"))
        is_base = (summary.get("baseline") or {}).get("source") == f"phase {name}"
        rows.append(
            {
                "phase": name + (" (baseline)" if is_base and name != "baseline" else ""),
                "epochs": str(ph.get("epochs_run", MISSING)),
                "best epoch": str(ph.get("best_epoch", MISSING)),
                "mAP@0.5": fmt_value(m50),
                "mAP@0.5:0.95": fmt_value(ph.get("best_map")),
                "Δ mAP@0.5": MISSING
                if is_base or m50 is None or baseline_map50 is None
                else fmt_delta(m50 - baseline_map50),
                "stopped because": str(ph.get("stop_reason") or MISSING),
                "time": f"{ph['seconds']:.0f} s" if isinstance(ph.get("seconds"), (int, float)) else MISSING,
            }
        )
    return rows


def _bound(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _gate_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for g in summary.get("gates") or []:
        # bounds may be negative (a relative gate below a weak baseline): not metric values
        low, high = _bound(g.get("min")), _bound(g.get("max"))
        bounds = f"[{'-∞' if low is None else f'{low:.4f}'}, {'∞' if high is None else f'{high:.4f}'})"
        rows.append(
            {
                "after": str(g.get("after")),
                "metric": str(g.get("metric")),
                "compared": str(g.get("compared_value", "best")),
                "value": fmt_value(g.get("value")),
                "range to continue": bounds,
                "next phase": "runs" if g.get("proceed") else "skipped",
                "reason": str(g.get("reason", "")),
            }
        )
    return rows


def report_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    pair: Sequence[str] | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    grid: int = GRID_IMAGES,
    progress: bool | None = None,
) -> RunReport:
    """The report of a training run: phases vs baseline, gate decisions, curves, final model metrics.

    Metrics of the final model and the baseline come from their ``metrics.json``; when one is
    missing, that checkpoint is evaluated on the run's validation set now (and the metrics are
    written to the report folder, so the next call reuses them).
    """
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise DataError(f"run folder {run} does not exist; give the output folder of `defectfusion train`")
    if not (run / "summary.json").is_file():
        raise DataError(
            f"{run} is not a training run folder: summary.json is missing (expected the output folder "
            f"of `defectfusion train`, after at least one phase finished)"
        )
    summary = read_json(run / "summary.json", "the run's summary")
    out_dir = Path(out) if out is not None else run / "report"
    final = summary.get("final") or {}
    baseline = summary.get("baseline") or {}
    # summary.json holds absolute paths; a run folder that was moved or copied still works
    recorded = Path(final["checkpoint"]) if final.get("checkpoint") else None
    old_root = recorded.parent if recorded is not None else None

    def here(path: str | None) -> Path | None:
        if not path:
            return None
        p = Path(path)
        if not p.exists() and old_root is not None and p.is_relative_to(old_root):
            return run / p.relative_to(old_root)
        return p

    final_ckpt = here(final.get("checkpoint"))
    if final_ckpt is None or not (final_ckpt / "config.json").is_file():
        raise DataError(
            f"{run} has no final model yet (summary.json 'final' is empty or {final_ckpt} is missing): "
            f"the run has not finished; resume it with `defectfusion train --resume --out {run}`"
        )

    index: CocoIndex | None = None

    def val_index() -> CocoIndex:
        nonlocal index
        if index is None:
            cfg = load_config(run / "config.yaml")
            if cfg.data.val is None:
                raise ConfigError(f"{run / 'config.yaml'} names no validation set (data.val)")
            try:
                index = load_coco(cfg.data.val.annotations, cfg.data.val.images)
            except DataError as exc:
                raise DataError(f"the run's validation set (data.val in {run / 'config.yaml'}): {exc}") from None
        return index

    evaluated: list[str] = []
    weights = final_ckpt / "model.safetensors"
    final_candidates: list[tuple[Path, Path | None]] = [(final_ckpt / "metrics.json", weights)]
    source = here(final.get("source"))
    if source is not None:  # the phase checkpoint final/ was copied from, evaluated during training
        final_candidates.append((source / "metrics.json", source / "model.safetensors"))
    final_candidates.append((out_dir / "metrics.json", weights))  # evaluated by an earlier report of this run
    final_metrics = _existing_metrics(final_candidates)
    predictor = None
    if final_metrics is None:
        predictor = Predictor.from_checkpoint(final_ckpt, device=device, batch_size=batch_size)
        final_metrics, _ = evaluate_on_index(predictor, val_index(), progress=progress, desc="evaluate final")
        evaluated.append(str(final_ckpt))

    base_ckpt = here(baseline.get("checkpoint"))
    base_weights = Path(base_ckpt) / "model.safetensors" if base_ckpt else None
    base_candidates: list[tuple[Path, Path | None]] = []
    if base_ckpt:
        base_candidates.append((Path(base_ckpt) / "metrics.json", base_weights))
    if summary.get("start") and baseline.get("source") == summary["start"].get("source"):
        base_candidates.append((run / "start" / "metrics.json", None))
    base_candidates.append((out_dir / "baseline_metrics.json", base_weights))
    base_metrics = _existing_metrics(base_candidates) if baseline else None
    if baseline and base_metrics is None and base_ckpt and Path(base_ckpt, "config.json").is_file():
        base_pred = Predictor.from_checkpoint(base_ckpt, device=device, batch_size=batch_size)
        base_metrics, _ = evaluate_on_index(base_pred, val_index(), progress=progress, desc="evaluate baseline")
        evaluated.append(str(base_ckpt))
    base_note = ""
    if baseline and base_metrics is None:
        base_note = (
            f"The baseline checkpoint ({baseline.get('checkpoint') or baseline.get('source')}) has no metrics "
            f"and cannot be found here, so the final model is shown without a comparison."
        )

    # Compare on the test images when the run has them (they selected nothing); otherwise the
    # validation images, which chose the final model: the labels say so in every table.
    test = summary.get("test") or {}
    where = "[val: selected on these, optimistic]"
    if test.get("final") and here(test["final"].get("results")) is not None:
        test_final = here(str(entry_metrics_file(test["final"])))
        test_base = here(str(entry_metrics_file(test["baseline"]))) if test.get("baseline") else None
        if test_final.is_file():
            final_metrics = load_metrics(test_final)
            base_metrics = load_metrics(test_base) if test_base is not None and test_base.is_file() else None
            where = f"[test: {test.get('num_images')} images that selected nothing]"
    names = final_metrics.class_names
    pair_names = resolve_pair(pair, names, _run_descriptions(run), configured_pair(run))
    result = EvaluationResult(
        final_metrics, names, labels=(f"baseline {where}", f"final {where}"), baseline=base_metrics, pair=pair_names
    )
    if base_metrics is not None:
        result.comparison = compare_metrics(base_metrics, final_metrics, names, labels=result.labels)
    if pair_names is not None:
        result.confusion = (
            confusion_pair(base_metrics, final_metrics, *pair_names)
            if base_metrics is not None
            else confusion_pair(final_metrics, None, *pair_names)
        )
    write_outputs(result, out_dir)

    items, grid_note = None, ""
    if grid > 0:
        try:
            idx = val_index()
            if predictor is None:
                predictor = Predictor.from_checkpoint(final_ckpt, device=device, batch_size=batch_size)
            ids = grid_ids(idx, pair_names, grid)
            items = grid_items(idx, predict_ids(predictor, idx, ids), ids)
        except DataError as exc:
            grid_note = f"Validation images not drawn: {exc}"

    base = Scored.from_dict(baseline)
    base_map50 = as_number(base.map50) if base else None
    phase_rows = _phase_rows(summary, base_map50)
    gate_rows = _gate_rows(summary)
    chosen = Scored.from_dict(final)
    final_text = (
        f"Final model: **{final.get('phase')}** (validation mAP@0.5 {fmt_value(chosen.map50 if chosen else None)}) "
        f"-> `{final_ckpt}`. {final.get('reason', '')}"
    )
    intro = [
        Section(
            "Training phases",
            "Best validation checkpoint of each phase; Δ is relative to the baseline.\n\n" + final_text,
            table=phase_rows,
        )
    ]
    intro.append(
        Section(
            "Gate decisions",
            "" if gate_rows else "No gates were applied in this run.",
            table=gate_rows or None,
            level=3,
        )
    )
    if evaluated:
        intro.append(
            Section(
                "Evaluated now",
                "These checkpoints had no metrics.json and were evaluated on the run's "
                "validation set for this report:\n\n" + "\n".join(f"- `{e}`" for e in evaluated),
                level=3,
            )
        )
    if grid_note:
        intro.append(Section("Validation images", grid_note, level=3))
    if base_note:
        intro.append(Section("Baseline", base_note, level=3))
    write_report(result, run, items, f"Training run {summary.get('name', run.name)}", intro=intro, split="validation")
    return RunReport(run, summary, phase_rows, gate_rows, final_text, result, evaluated)
