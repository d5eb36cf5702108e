"""``defectfusion evaluate``: score a checkpoint (or a results file) on a COCO set and write the report.

- :func:`evaluate_checkpoint`: a detector (folder or ``.onnx``) on annotated images; optionally a
  baseline checkpoint on the same images (per-class before / after / delta, the confusable pair
  called out) and what-if descriptions (:mod:`.what_if`).
- :func:`evaluate_predictions`: any detector's COCO results file.

Files written to ``out``::

    metrics.json             the evaluated model (schema: engine.evaluation.evaluator)
    baseline_metrics.json    the baseline, when one is given
    comparison.json          per-class before/after/delta rows and the confusion pair, with a baseline
    what_if.json             one row per description file (mAP, pair APs, pair confusions)
    what_if/<label>.json     the full metrics of each description file
    report.md, report.html   tables and plots (report.html is self-contained), plots/*.png
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_config
from ..data.coco import CocoIndex, load_coco
from ..data.dataset_check import split_names
from ..data.descriptions import descriptions_near, resolve_pair
from ..engine.evaluation.evaluator import write_metrics
from ..engine.evaluation.results_file import evaluate_results_file
from ..engine.evaluation.validation import evaluate_on_index
from ..engine.prediction.predictor import Predictor
from ..engine.prediction.tiling import TiledPredictor
from ..engine.training.phase_records import find_run_folder
from ..errors import CheckpointError, DataError, DefectFusionError
from ..io import atomic_write_json
from ..report.compare import ComparisonTable, ConfusionPair, compare_metrics, confusion_pair, pair_counts
from ..report.summary import Section, build_report
from ..report.values import as_number
from ..structures import Metrics
from .grid import GRID_IMAGES, choose_grid, grid_items, results_detections
from .what_if import WhatIf, evaluate_with_descriptions


@dataclass
class EvaluationResult:
    """What an evaluation computed and wrote.

    Attributes:
        metrics: the evaluated model's metrics (``metrics.json``).
        class_names: contiguous class names.
        labels: display names of (baseline, evaluated model).
        baseline: the baseline's metrics on the same images, if one was given.
        comparison: per-class before/after/delta, with a baseline.
        pair: the confusable pair called out (``None`` when the classes do not exist).
        confusion: the pair's counts before (and after, with a baseline).
        what_if: one entry per description file.
        files: every file written (report and plots included).
    """

    metrics: Metrics
    class_names: list[str]
    labels: tuple[str, str] = ("baseline", "model")
    baseline: Metrics | None = None
    comparison: ComparisonTable | None = None
    pair: tuple[str, str] | None = None
    confusion: ConfusionPair | None = None
    what_if: list[WhatIf] = field(default_factory=list)
    out: Path | None = None
    report_md: Path | None = None
    report_html: Path | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # caveats, also shown in the report

    def what_if_rows(self) -> list[dict[str, Any]]:
        """One row per description file: mAP@0.5 (and change vs the model as trained), pair APs and confusions.

        Values are floats / ints or ``None`` (undefined); ``map50_delta`` is relative to the
        model with the text embeddings it was trained with (``metrics``).
        """
        rows = []
        ref = as_number(self.metrics.map50)
        for w in self.what_if:
            m50 = as_number(w.metrics.map50)
            row: dict[str, Any] = {
                "descriptions": w.label,
                "file": w.descriptions,
                "map50": m50,
                "map50_delta": None if m50 is None or ref is None else m50 - ref,
                "map": as_number(w.metrics.map),
            }
            if self.pair is not None:
                a, b = self.pair
                row[f"ap50_{a}"] = as_number(w.metrics.per_class[a].ap50)
                row[f"ap50_{b}"] = as_number(w.metrics.per_class[b].ap50)
                row[f"{a}_as_{b}"], row[f"{b}_as_{a}"] = pair_counts(w.metrics, a, b)
            rows.append(row)
        return rows


def _short(path: str | os.PathLike) -> str:
    """The last two parts of a path (``phase1/best``, ``val/annotations.json``): enough to tell runs apart."""
    parts = Path(path).expanduser().resolve().parts
    return "/".join(parts[-2:])


def _check_classes(names: Sequence[str], index: CocoIndex, source: str) -> None:
    if list(names) != list(index.class_names):
        raise CheckpointError(
            f"{source} predicts the classes {list(names)}, but {index.annotations_file} has "
            f"{list(index.class_names)}; evaluate on data of the classes the model was trained for (same names, "
            f"same order)"
        )


def split_name(annotations: str | os.PathLike) -> str:
    """What the evaluated images are called in titles: ``test`` for ``test/annotations.json`` or ``test.json``."""
    return split_names([Path(annotations)])[0]


def selected_on(checkpoint: str | os.PathLike, annotations: str | os.PathLike) -> bool:
    """Whether ``annotations`` are the validation images of the run ``checkpoint`` belongs to (they
    chose it, so numbers on them are optimistic)."""
    run = find_run_folder(checkpoint)
    if run is None:
        return False
    try:
        val = load_config(run / "config.yaml").data.val
    except DefectFusionError:
        return False
    return val is not None and Path(val.annotations).resolve() == Path(annotations).expanduser().resolve()


def configured_pair(run: Path | None) -> tuple[str, str] | None:
    """The ``data.confusable_pair`` of a run folder's config (the run a checkpoint came from), if any."""
    if run is None:
        return None
    try:
        return load_config(run / "config.yaml").data.confusable_pair
    except DefectFusionError:
        return None


def _pair_sources(model: Any, descriptions: Sequence[str], annotations: str | os.PathLike) -> list[Any]:
    """Where the confusable pair is looked up: the model's descriptions, the what-if files, the dataset's."""
    fusion = getattr(getattr(model, "meta", None), "fusion", None)
    return [getattr(fusion, "descriptions", None), *descriptions, *descriptions_near(annotations)]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    annotations: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    baseline: str | os.PathLike | None = None,
    descriptions: Sequence[str] = (),
    encoder: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    pair: Sequence[str] | None = None,
    iou_threshold: float = 0.5,
    conf_threshold: float = 0.25,
    top_k: int = 300,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str = "cpu",
    tiles: int | None = None,
    overlap: float = 0.2,
    full_image: bool = False,
    training: Any = None,
    grid: int = GRID_IMAGES,
    report: bool = True,
    progress: bool | None = None,
    title: str | None = None,
) -> EvaluationResult:
    """Evaluate a checkpoint on a COCO set (and a baseline, and what-if descriptions); write files and report.

    Args:
        checkpoint: detector folder or ``.onnx`` file.
        annotations, images: the COCO annotations and their images folder (default: beside the json).
        baseline: a second checkpoint evaluated on the same images: the reference ("before").
        descriptions: description files (or packaged names) to evaluate the fused model with.
        encoder: text encoder spec for ``descriptions``; default: the one the model was trained with.
        out: where to write; ``None`` writes nothing.
        pair: the confusable pair; default: the ``confusable_pair`` of the model's descriptions (or of
            ``descriptions``, or of a ``descriptions.yml`` beside the dataset) when its classes exist.
        iou_threshold, conf_threshold: of the confusion matrix and P/R/F1 matching.
        tiles, overlap, full_image: sliced inference (:class:`~defectfusion.engine.prediction.tiling.TiledPredictor`)
            for the model and the baseline alike: ``tiles`` px crops at native resolution, merged.
        training: run folder / ``metrics.jsonl`` for training curves; ``None``: the run folder the
            checkpoint lives in, if any; ``False``: none.
        grid: validation images drawn with predictions and ground truth in the report.
    """
    index = load_coco(annotations, images)  # clipped / dropped boxes are reported once (CocoWarning)
    predictor = Predictor.from_checkpoint(
        checkpoint, device=device, top_k=top_k, threshold=0.0, batch_size=batch_size, num_workers=num_workers
    )
    model = predictor.model
    _check_classes(predictor.class_names, index, str(checkpoint))
    names = list(index.class_names)
    pair_names = resolve_pair(
        pair, names, _pair_sources(model, descriptions, annotations), configured_pair(find_run_folder(checkpoint))
    )
    eval_kw = {"iou_threshold": iou_threshold, "conf_threshold": conf_threshold}

    base_predictor = None
    if baseline is not None:
        base_predictor = Predictor.from_checkpoint(
            baseline, device=device, top_k=top_k, threshold=0.0, batch_size=batch_size, num_workers=num_workers
        )
        _check_classes(base_predictor.class_names, index, f"baseline {baseline}")

    if tiles is not None:
        predictor = TiledPredictor(predictor, tiles, overlap, full_image=full_image)
        if base_predictor is not None:
            base_predictor = TiledPredictor(base_predictor, tiles, overlap, full_image=full_image)
    drawing = grid if report and out is not None else 0
    keep = [r.id for r in index.images] if drawing else []  # the grid is chosen from every image's outcome
    metrics, kept = evaluate_on_index(predictor, index, keep=keep, progress=progress, **eval_kw)
    reasons = dict(choose_grid(index, kept, drawing, conf=conf_threshold, iou=iou_threshold))
    chosen = list(reasons)
    label = "fused" if model is not None and model.is_fused else "model"
    labels = ("baseline", label)
    if selected_on(checkpoint, annotations):
        labels = tuple(f"{x} [selected on these images: optimistic]" for x in labels)
    result = EvaluationResult(metrics, names, labels=labels, pair=pair_names)
    if base_predictor is not None:
        result.baseline, _ = evaluate_on_index(
            base_predictor, index, progress=progress, desc="evaluate baseline", **eval_kw
        )
        result.comparison = compare_metrics(result.baseline, metrics, names, labels=result.labels)
    if pair_names is not None:
        result.confusion = (
            confusion_pair(result.baseline, metrics, *pair_names)
            if result.baseline is not None
            else confusion_pair(metrics, None, *pair_names)
        )
    if descriptions:
        result.what_if = evaluate_with_descriptions(
            model, predictor, index, descriptions, encoder, checkpoint, cache_dir, progress, result.notes, **eval_kw
        )

    if out is None:
        return result
    write_outputs(result, Path(out))
    if report:
        if training is None:
            training = find_run_folder(checkpoint)
        items = grid_items(index, kept, chosen, reasons) if chosen else None
        write_report(
            result,
            training or None,
            items,
            title or f"Evaluation of {_short(checkpoint)} on {_short(annotations)}",
            split=split_name(annotations),
        )
    return result


def write_outputs(result: EvaluationResult, out: Path) -> None:
    """``metrics.json`` (and the baseline's, the comparison, the what-if rows) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    result.out = out
    write_metrics(result.metrics, out / "metrics.json")
    result.files.append(out / "metrics.json")
    if result.baseline is not None:
        write_metrics(result.baseline, out / "baseline_metrics.json")
        comparison: dict[str, Any] = {"labels": list(result.labels), "rows": result.comparison.to_rows()}
        if result.confusion is not None:
            c = result.confusion
            comparison["pair"] = {
                "a": c.a,
                "b": c.b,
                "a_as_b": {"before": c.a_as_b_before, "after": c.a_as_b_after},
                "b_as_a": {"before": c.b_as_a_before, "after": c.b_as_a_after},
            }
        atomic_write_json(out / "comparison.json", comparison)
        result.files += [out / "baseline_metrics.json", out / "comparison.json"]
    if result.what_if:
        for w in result.what_if:
            write_metrics(w.metrics, out / "what_if" / f"{w.label}.json")
            result.files.append(out / "what_if" / f"{w.label}.json")
        atomic_write_json(
            out / "what_if.json",
            {
                "reference": {
                    "map50": result.metrics.map50,
                    "note": "the model with its trained text embeddings",
                },
                "pair": list(result.pair) if result.pair else None,
                "rows": result.what_if_rows(),
            },
        )
        result.files.append(out / "what_if.json")


def write_report(
    result: EvaluationResult, training: Any, grid_items: list | None, title: str, intro=(), split: str = "validation"
) -> None:
    """``report.md`` and ``report.html`` (and plots) of an evaluation into ``result.out``."""
    what_if = None
    extra = [Section("Notes", "\n".join(f"- {n}" for n in result.notes))] if result.notes else []
    if result.what_if:
        what_if = [("as trained", result.metrics)] + [(w.label, w.metrics) for w in result.what_if]
    md, html = build_report(
        result.out,
        result.metrics,
        baseline=result.baseline,
        labels=result.labels,
        pair=result.pair if result.pair else False,
        training=training,
        images=grid_items,
        class_names=result.class_names,
        what_if=what_if,
        title=title,
        split=split,
        intro_sections=intro,
        extra_sections=extra,
    )
    result.report_md, result.report_html = md, html
    result.files += [md, html, *sorted((result.out / "plots").glob("*.png"))]


def evaluate_predictions(
    results_json: str | os.PathLike,
    annotations: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    pair: Sequence[str] | None = None,
    iou_threshold: float = 0.5,
    conf_threshold: float = 0.25,
    grid: int = GRID_IMAGES,
    report: bool = True,
    title: str | None = None,
) -> EvaluationResult:
    """Metrics of any detector's COCO results file; the report draws images when they can be found."""
    metrics = evaluate_results_file(
        results_json, annotations, iou_threshold=iou_threshold, conf_threshold=conf_threshold
    )
    names = metrics.class_names
    pair_names = resolve_pair(pair, names, descriptions_near(annotations))
    result = EvaluationResult(metrics, names, labels=("baseline", "detector"), pair=pair_names)
    if pair_names is not None:
        result.confusion = confusion_pair(metrics, None, *pair_names)
    if out is None:
        return result
    write_outputs(result, Path(out))
    if report:
        items = None
        try:
            index = load_coco(annotations, images)
        except DataError:
            index = None  # the images are not here: the report goes without the picture grid
        if index is not None and grid > 0:
            found = results_detections(results_json, index, {r.id for r in index.images})
            reasons = dict(choose_grid(index, found, grid, conf=conf_threshold, iou=iou_threshold))
            items = grid_items(index, found, list(reasons), reasons)
        title = title or f"Evaluation of {_short(results_json)} on {_short(annotations)}"
        write_report(result, None, items, title, split=split_name(annotations))
    return result
