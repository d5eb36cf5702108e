"""``defectfusion evaluate`` / ``report``: score checkpoints on a COCO set and write the report.

- :func:`evaluate_checkpoint`: a detector (folder or ``.onnx``) on annotated images; optionally a
  baseline checkpoint on the same images (per-class before / after / delta, the confusable pair
  called out) and *what-if descriptions*: the fused model re-evaluated with the class text
  embeddings of other description files, without retraining.
- :func:`evaluate_predictions`: any detector's COCO results file.
- :func:`report_run`: the report of a training run folder (phases, gates, curves, final model).

Files written to ``out``::

    metrics.json             the evaluated model (schema: engine.evaluator)
    baseline_metrics.json    the baseline, with --baseline
    comparison.json          per-class before/after/delta rows and the confusion pair, with --baseline
    what_if.json             one row per description file (mAP, pair APs, pair confusions)
    what_if/<label>.json     the full metrics of each description file
    report.md, report.html   tables and plots (report.html is self-contained), plots/*.png
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.coco import CocoIndex, load_coco
from ..data.images import load_image
from ..errors import CheckpointError, ConfigError, DataError, DefectFusionError
from ..io import atomic_write_json, read_json
from ..report.compare import (
    MISSING,
    ComparisonTable,
    ConfusionPair,
    as_number,
    compare_metrics,
    confusion_pair,
    fmt_delta,
    fmt_value,
    load_metrics,
    pair_counts,
)
from ..structures import Detections
from .evaluator import DetectionEvaluator, evaluate_results_file, write_metrics
from .predictor import Predictor, _looks_onnx, load_onnx_backend

__all__ = [
    "DEFAULT_PAIR",
    "WhatIf",
    "EvaluationResult",
    "RunReport",
    "evaluate_checkpoint",
    "evaluate_predictions",
    "evaluate_on_index",
    "report_run",
    "resolve_pair",
    "text_encoder_spec",
    "find_run_folder",
]

DEFAULT_PAIR = ("ROTURA_FRACTURA", "RAYONES_ARANAZOS")
GRID_IMAGES = 8


# ---------------------------------------------------------------------------------- results


@dataclass
class WhatIf:
    """The fused model evaluated with the text embeddings of one description file."""

    label: str
    descriptions: str
    encoder: str
    metrics: dict[str, Any]


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

    metrics: dict[str, Any]
    class_names: list[str]
    labels: tuple[str, str] = ("baseline", "model")
    baseline: dict[str, Any] | None = None
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
        ref = as_number(self.metrics.get("map50"))
        for w in self.what_if:
            m50 = as_number(w.metrics.get("map50"))
            row: dict[str, Any] = {
                "descriptions": w.label,
                "file": w.descriptions,
                "map50": m50,
                "map50_delta": None if m50 is None or ref is None else m50 - ref,
                "map": as_number(w.metrics.get("map")),
            }
            if self.pair is not None:
                a, b = self.pair
                row[f"ap50_{a}"] = as_number(w.metrics["per_class"][a].get("ap50"))
                row[f"ap50_{b}"] = as_number(w.metrics["per_class"][b].get("ap50"))
                row[f"{a}_as_{b}"], row[f"{b}_as_{a}"] = pair_counts(w.metrics, a, b)
            rows.append(row)
        return rows


# ---------------------------------------------------------------------------------- helpers


def resolve_pair(pair: Sequence[str] | None, class_names: Sequence[str]) -> tuple[str, str] | None:
    """The confusable pair: ``pair`` checked against the classes, else the default when both exist."""
    names = list(class_names)
    if pair is None:
        return DEFAULT_PAIR if all(n in names for n in DEFAULT_PAIR) else None
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ConfigError(f"--pair needs two different class names, got {list(pair)}")
    for name in pair:
        if name not in names:
            close = [n for n in names if name.lower() in n.lower()] or difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--pair: unknown class {name!r}; the classes are {', '.join(names)}.{hint}")
    return (pair[0], pair[1])


def find_run_folder(checkpoint: str | os.PathLike | None) -> Path | None:
    """The training run folder a checkpoint lives in (``run/final``, ``run/phase1/best``), if any."""
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser().resolve()
    for folder in (path.parent, path.parent.parent):
        if (folder / "summary.json").is_file() and (folder / "config.yaml").is_file():
            return folder
    return None


def _short(path: str | os.PathLike) -> str:
    """The last two parts of a path (``phase1/best``, ``val/annotations.json``): enough to tell runs apart."""
    parts = Path(path).expanduser().resolve().parts
    return "/".join(parts[-2:])


def _load_index(annotations: str | os.PathLike, images: str | os.PathLike | None) -> CocoIndex:
    return load_coco(annotations, images)  # clipped / dropped boxes are reported once (CocoWarning)


def _check_classes(names: Sequence[str], index: CocoIndex, source: str) -> None:
    if list(names) != list(index.class_names):
        raise CheckpointError(
            f"{source} predicts the classes {list(names)}, but {index.annotations_file} has "
            f"{list(index.class_names)}; evaluate on data of the classes the model was trained for (same names, "
            f"same order)"
        )


def _grid_ids(index: CocoIndex, pair: tuple[str, str] | None, count: int) -> list[int]:
    """Up to ``count`` images to draw: those with the pair's classes first, then others with objects."""
    if count <= 0:
        return []
    pair_labels = {index.class_names.index(n) for n in pair} if pair else set()

    def rank(k: int) -> tuple[int, int]:
        labels = {a.label for a in index.annotations[index.images[k].id] if not a.iscrowd}
        return (-len(labels & pair_labels), 0 if labels else 1)

    order = sorted(range(len(index.images)), key=lambda k: (*rank(k), k))
    return [index.images[k].id for k in order[:count]]


def evaluate_on_index(predictor: Predictor, index: CocoIndex, *, iou_threshold: float = 0.5,
                      conf_threshold: float = 0.25, keep: Sequence[int] = (), progress: bool | None = None,
                      desc: str = "evaluate") -> tuple[dict[str, Any], dict[int, Detections]]:
    """Metrics of a predictor on every image of ``index``, and the detections of the ids in ``keep``."""
    evaluator = DetectionEvaluator(index.to_coco_dict(), iou_threshold=iou_threshold, conf_threshold=conf_threshold)
    kept: dict[int, Detections] = {}
    wanted = set(keep)
    paths = [r.path for r in index.images]
    ids = [r.id for r in index.images]
    sizes = [(r.width, r.height) for r in index.images]
    for pred in predictor.predict_files(paths, ids, expected_sizes=sizes, progress=progress, desc=desc):
        evaluator.process([pred.image_id], [pred.detections])
        if pred.image_id in wanted:
            kept[pred.image_id] = pred.detections
    return evaluator.evaluate(all_images=True), kept


def _predict_ids(predictor: Predictor, index: CocoIndex, ids: Sequence[int]) -> dict[int, Detections]:
    records = {r.id: r for r in index.images}
    chosen = [records[i] for i in ids]
    preds = predictor.predict_files([r.path for r in chosen], [r.id for r in chosen],
                                    expected_sizes=[(r.width, r.height) for r in chosen], progress=False)
    return {p.image_id: p.detections for p in preds}


def _grid_items(index: CocoIndex, detections: dict[int, Detections], ids: Sequence[int]) -> list[dict[str, Any]]:
    records = {r.id: r for r in index.images}
    items = []
    for image_id in ids:
        rec = records[image_id]
        boxes, labels = index.training_targets(image_id)
        items.append({"image": load_image(rec.path), "detections": detections.get(image_id),
                      "gt": (boxes, labels), "title": rec.file_name})
    return items


def text_encoder_spec(model, encoder: str | None = None, checkpoint: str | os.PathLike | None = None) -> str:
    """The text encoder spec for what-if descriptions: ``encoder``, else the one the model was trained with.

    The model's ``meta.fusion.encoder_spec`` (saved at training time), else the run folder's
    ``config.yaml``, else the spec behind the stored encoder identity for hub models.
    """
    if encoder:
        return encoder
    fusion = model.meta.fusion
    if fusion.encoder_spec:
        return fusion.encoder_spec
    run = find_run_folder(checkpoint)
    if run is not None:
        import yaml

        try:
            saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
            spec = (saved.get("fusion") or {}).get("encoder")
        except (OSError, yaml.YAMLError, AttributeError):
            spec = None
        if isinstance(spec, str) and spec:
            return spec
    identity = fusion.encoder or ""
    kind, _, rest = identity.partition(":")
    if kind in ("clip", "sentence") and rest.startswith("hub:"):
        return f"{kind}:{rest[len('hub:'):]}"
    raise ConfigError(
        f"the model was trained with the text encoder {identity or '(unknown)'!r}, which does not say how to load "
        f"it again; pass --encoder SPEC (the fusion.encoder of the training config, e.g. clip:openai/clip-vit-base-patch32)"
    )


def _what_if_label(name: str, used: set[str]) -> str:
    path = Path(name)
    base = path.stem if path.suffix in {".yml", ".yaml"} else str(name)
    label, n = base, 2
    while label in used:
        label, n = f"{base} ({n})", n + 1
    used.add(label)
    return label


def _note(notes: list[str], message: str) -> None:
    """A caveat of this evaluation: a one-line warning now, and a line in the report."""
    notes.append(message)
    warnings.warn(message, stacklevel=4)


def _warn_if_text_drifted(model, checkpoint: str | os.PathLike, notes: list[str]) -> None:
    """What-if swaps in unit-norm embeddings, identical in every head; say so if the checkpoint's are not."""
    heads = list(model.fusion_heads())
    norms = torch.cat([h.text_embeddings.norm(dim=-1) for h in heads])
    first = heads[0].text_embeddings
    if (norms - 1).abs().max() > 1e-3 or any(not torch.allclose(h.text_embeddings, first, atol=1e-4) for h in heads):
        _note(
            notes,
            f"{checkpoint}: the class text embeddings stored in the fusion heads are not the unit vectors they were "
            f"built with (norms {norms.min():.3f}..{norms.max():.3f}, or different per head): they changed after "
            f"building (e.g. averaged as if they were weights); what-if rows use clean embeddings, so even the "
            f"training descriptions will not reproduce the model's own numbers",
        )


def _what_if(model, predictor: Predictor, index: CocoIndex, descriptions: Sequence[str], encoder: str | None,
             checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None, progress: bool | None,
             notes: list[str], **eval_kw: Any) -> list[WhatIf]:
    from ..data.descriptions import load_descriptions
    from ..models.text import build_text_encoder, encode_descriptions

    if model is None:
        raise ConfigError("what-if descriptions need the PyTorch detector folder, not an exported ONNX model")
    if not model.is_fused:
        raise ConfigError(
            f"{checkpoint} has no text-fusion head, so its predictions do not depend on descriptions; "
            f"give a fused checkpoint (e.g. RUN/phase1/best or RUN/final of a fusion run) to use --descriptions"
        )
    fusion = model.meta.fusion
    if fusion.text == "random":
        raise ConfigError(
            f"{checkpoint} is the random-text control (fusion.text: random): its head never saw text, so swapping "
            f"descriptions measures nothing; use a model trained with descriptions"
        )
    spec = text_encoder_spec(model, encoder, checkpoint)
    text_encoder = build_text_encoder(spec)
    _warn_if_text_drifted(model, checkpoint, notes)
    originals = [(head, head.text_embeddings.detach().clone()) for head in model.fusion_heads()]
    results, used = [], set()
    try:
        for item in descriptions:
            desc = load_descriptions(item).ordered_like(model.class_names)
            embeddings = encode_descriptions(desc, spec, cache_dir, encoder=text_encoder)
            dim = int(embeddings.class_embeddings.shape[1])
            if dim != fusion.text_dim:
                raise ConfigError(
                    f"{desc.source or item}: the text encoder {spec} gives {dim}-dimensional embeddings, but the "
                    f"model's fusion head was trained on {fusion.text_dim}-dimensional ones; use the encoder the "
                    f"model was trained with (--encoder {fusion.encoder_spec or 'SPEC'})"
                )
            if not results and fusion.encoder and embeddings.encoder != fusion.encoder:
                _note(
                    notes,
                    f"what-if texts are embedded with {spec} ({embeddings.encoder}) but the model was trained with "
                    f"{fusion.encoder}; its fusion head was fitted to that encoder's text space",
                )
            model.set_text_embeddings(embeddings.class_embeddings)
            label = _what_if_label(str(item), used)
            metrics, _ = evaluate_on_index(predictor, index, progress=progress, desc=f"what-if {label}", **eval_kw)
            results.append(WhatIf(label, desc.source or str(item), spec, metrics))
    finally:
        with torch.no_grad():  # exactly what the checkpoint held, head by head
            for head, saved in originals:
                head.text_embeddings.copy_(saved)
    return results


# ---------------------------------------------------------------------------------- evaluate


def _load_predictor(checkpoint: str | os.PathLike, *, device: str, top_k: int, batch_size: int,
                    num_workers: int):
    """(predictor with threshold 0, the PyTorch model or None for ONNX)."""
    path = Path(checkpoint).expanduser()
    kw = {"threshold": 0.0, "batch_size": batch_size, "num_workers": num_workers}
    if path.is_file() and _looks_onnx(path):
        onnx = load_onnx_backend(path)
        return Predictor(onnx, onnx.class_names, onnx.image_size, onnx.image_mean, onnx.image_std, **kw), None
    from ..models.checkpoint import load_detector

    model = load_detector(path, device=device)
    return Predictor.from_model(model, device=device, top_k=top_k, **kw), model


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
        pair: the confusable pair; default ROTURA_FRACTURA / RAYONES_ARANAZOS when both exist.
        iou_threshold, conf_threshold: of the confusion matrix and P/R/F1 matching.
        training: run folder / ``metrics.jsonl`` for training curves; ``None``: the run folder the
            checkpoint lives in, if any; ``False``: none.
        grid: validation images drawn with predictions and ground truth in the report.
    """
    index = _load_index(annotations, images)
    predictor, model = _load_predictor(checkpoint, device=device, top_k=top_k, batch_size=batch_size,
                                       num_workers=num_workers)
    _check_classes(predictor.class_names, index, str(checkpoint))
    names = list(index.class_names)
    pair_names = resolve_pair(pair, names)
    eval_kw = {"iou_threshold": iou_threshold, "conf_threshold": conf_threshold}

    base_predictor = None
    if baseline is not None:
        base_predictor, _ = _load_predictor(baseline, device=device, top_k=top_k, batch_size=batch_size,
                                            num_workers=num_workers)
        _check_classes(base_predictor.class_names, index, f"baseline {baseline}")

    grid_ids = _grid_ids(index, pair_names, grid if report and out is not None else 0)
    metrics, kept = evaluate_on_index(predictor, index, keep=grid_ids, progress=progress, **eval_kw)
    label = "fused" if model is not None and model.is_fused else "model"
    result = EvaluationResult(metrics, names, labels=("baseline", label), pair=pair_names)
    if base_predictor is not None:
        result.baseline, _ = evaluate_on_index(base_predictor, index, progress=progress, desc="evaluate baseline",
                                               **eval_kw)
        result.comparison = compare_metrics(result.baseline, metrics, names, labels=result.labels)
    if pair_names is not None:
        result.confusion = confusion_pair(result.baseline, metrics, *pair_names) if result.baseline else \
            confusion_pair(metrics, None, *pair_names)
    if descriptions:
        result.what_if = _what_if(model, predictor, index, descriptions, encoder, checkpoint, cache_dir, progress,
                                  result.notes,
                                  **eval_kw)

    if out is None:
        return result
    _write_outputs(result, Path(out))
    if report:
        if training is None:
            training = find_run_folder(checkpoint)
        grid_items = _grid_items(index, kept, grid_ids) if grid_ids else None
        _write_report(result, training or None, grid_items,
                      title or f"Evaluation of {_short(checkpoint)} on {_short(annotations)}")
    return result


def _write_outputs(result: EvaluationResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.out = out
    write_metrics(result.metrics, out / "metrics.json")
    result.files.append(out / "metrics.json")
    if result.baseline is not None:
        write_metrics(result.baseline, out / "baseline_metrics.json")
        comparison: dict[str, Any] = {"labels": list(result.labels), "rows": result.comparison.to_rows()}
        if result.confusion is not None:
            c = result.confusion
            comparison["pair"] = {"a": c.a, "b": c.b, "a_as_b": {"before": c.a_as_b_before, "after": c.a_as_b_after},
                                  "b_as_a": {"before": c.b_as_a_before, "after": c.b_as_a_after}}
        atomic_write_json(out / "comparison.json", comparison)
        result.files += [out / "baseline_metrics.json", out / "comparison.json"]
    if result.what_if:
        for w in result.what_if:
            write_metrics(w.metrics, out / "what_if" / f"{w.label}.json")
            result.files.append(out / "what_if" / f"{w.label}.json")
        atomic_write_json(out / "what_if.json", {
            "reference": {"map50": result.metrics.get("map50"), "note": "the model with its trained text embeddings"},
            "pair": list(result.pair) if result.pair else None, "rows": result.what_if_rows()})
        result.files.append(out / "what_if.json")


def _write_report(result: EvaluationResult, training: Any, grid_items: list | None, title: str,
                  intro=()) -> None:
    from ..report.summary import Section, build_report

    what_if = None
    extra = [Section("Notes", "\n".join(f"- {n}" for n in result.notes))] if result.notes else []
    if result.what_if:
        what_if = [("as trained", result.metrics)] + [(w.label, w.metrics) for w in result.what_if]
    md, html = build_report(
        result.out, result.metrics, baseline=result.baseline, labels=result.labels,
        pair=result.pair if result.pair else False, training=training, images=grid_items,
        class_names=result.class_names, what_if=what_if, title=title, intro_sections=intro, extra_sections=extra,
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
    metrics = evaluate_results_file(results_json, annotations, iou_threshold=iou_threshold,
                                     conf_threshold=conf_threshold)
    names = list(metrics["per_class"])
    pair_names = resolve_pair(pair, names)
    result = EvaluationResult(metrics, names, labels=("baseline", "detector"), pair=pair_names)
    if pair_names is not None:
        result.confusion = confusion_pair(metrics, None, *pair_names)
    if out is None:
        return result
    _write_outputs(result, Path(out))
    if report:
        grid_items = None
        try:
            index = _load_index(annotations, images)
        except DataError:
            index = None  # the images are not here: the report goes without the picture grid
        if index is not None and grid > 0:
            ids = _grid_ids(index, pair_names, grid)
            dets = _results_detections(results_json, index, set(ids))
            grid_items = _grid_items(index, dets, ids)
        _write_report(result, None, grid_items,
                      title or f"Evaluation of {_short(results_json)} on {_short(annotations)}")
    return result


def _results_detections(results_json: str | os.PathLike, index: CocoIndex, ids: set[int]) -> dict[int, Detections]:
    records = json.loads(Path(results_json).read_text(encoding="utf-8"))  # already validated by the evaluator
    grouped: dict[int, list[tuple[list[float], float, int]]] = {i: [] for i in ids}
    for r in records:
        if r["image_id"] in grouped:
            x, y, w, h = r["bbox"]
            grouped[r["image_id"]].append(([x, y, x + w, y + h], float(r["score"]),
                                           index.category_id_to_label[r["category_id"]]))
    out = {}
    for image_id, recs in grouped.items():
        recs.sort(key=lambda t: -t[1])
        out[image_id] = Detections(torch.tensor([b for b, _, _ in recs], dtype=torch.float32).reshape(-1, 4),
                                   torch.tensor([s for _, s, _ in recs], dtype=torch.float32),
                                   torch.tensor([c for _, _, c in recs], dtype=torch.int64))
    return out


# ---------------------------------------------------------------------------------- run report


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


def _existing_metrics(candidates: Sequence[tuple[Path, Path | None]]) -> dict[str, Any] | None:
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
    start = summary.get("start")
    if start:
        rows.append({"phase": "start", "epochs": MISSING, "best epoch": MISSING,
                     "mAP@0.5": fmt_value(start.get("map50")), "mAP@0.5:0.95": fmt_value(start.get("map")),
                     "Δ mAP@0.5": MISSING, "stopped because": f"the starting checkpoint ({start.get('source')})",
                     "time": MISSING})
    for name, ph in (summary.get("phases") or {}).items():
        m50 = as_number(ph.get("best_map50"))
        is_base = (summary.get("baseline") or {}).get("source") == f"phase {name}"
        rows.append({
            "phase": name + (" (baseline)" if is_base and name != "baseline" else ""),
            "epochs": str(ph.get("epochs_run", MISSING)),
            "best epoch": str(ph.get("best_epoch", MISSING)),
            "mAP@0.5": fmt_value(m50),
            "mAP@0.5:0.95": fmt_value(ph.get("best_map")),
            "Δ mAP@0.5": MISSING if is_base or m50 is None or baseline_map50 is None
            else fmt_delta(m50 - baseline_map50),
            "stopped because": str(ph.get("stop_reason") or MISSING),
            "time": f"{ph['seconds']:.0f} s" if isinstance(ph.get("seconds"), (int, float)) else MISSING,
        })
    return rows


def _gate_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for g in summary.get("gates") or []:
        low, high = as_number(g.get("min")), as_number(g.get("max"))
        bounds = f"[{'-∞' if low is None else f'{low:.3f}'}, {'∞' if high is None else f'{high:.3f}'})"
        rows.append({"after": str(g.get("after")), "metric": str(g.get("metric")),
                     "compared": str(g.get("compared_value", "best")), "value": fmt_value(g.get("value")),
                     "range to continue": bounds, "next phase": "runs" if g.get("proceed") else "skipped",
                     "reason": str(g.get("reason", ""))})
    return rows


def report_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, pair: Sequence[str] | None = None,
               device: str = "cpu", batch_size: int = 8, grid: int = GRID_IMAGES,
               progress: bool | None = None) -> RunReport:
    """The report of a training run: phases vs baseline, gate decisions, curves, final model metrics.

    Metrics of the final model and the baseline come from their ``metrics.json``; when one is
    missing, that checkpoint is evaluated on the run's validation set now (and the metrics are
    written to the report folder, so the next call reuses them).
    """
    from ..config import load_config
    from ..report.summary import Section

    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise DataError(f"run folder {run} does not exist; give the --out folder of `defectfusion train`")
    if not (run / "summary.json").is_file():
        raise DataError(f"{run} is not a training run folder: summary.json is missing (expected the --out folder "
                        f"of `defectfusion train`, after at least one phase finished)")
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
        raise DataError(f"{run} has no final model yet (summary.json 'final' is empty or {final_ckpt} is missing): "
                        f"the run has not finished; resume it with `defectfusion train --resume --out {run}`")

    index: CocoIndex | None = None

    def val_index() -> CocoIndex:
        nonlocal index
        if index is None:
            cfg = load_config(run / "config.yaml")
            if cfg.data.val is None:
                raise ConfigError(f"{run / 'config.yaml'} names no validation set (data.val)")
            try:
                index = _load_index(cfg.data.val.annotations, cfg.data.val.images)
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
        predictor, _ = _load_predictor(final_ckpt, device=device, top_k=300, batch_size=batch_size, num_workers=0)
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
        base_pred, _ = _load_predictor(base_ckpt, device=device, top_k=300, batch_size=batch_size, num_workers=0)
        base_metrics, _ = evaluate_on_index(base_pred, val_index(), progress=progress, desc="evaluate baseline")
        evaluated.append(str(base_ckpt))
    base_note = ""
    if baseline and base_metrics is None:
        base_note = (f"The baseline checkpoint ({baseline.get('checkpoint') or baseline.get('source')}) has no metrics "
                     f"and cannot be found here, so the final model is shown without a comparison.")

    names = list(final_metrics["per_class"])
    pair_names = resolve_pair(pair, names)
    result = EvaluationResult(final_metrics, names, labels=("baseline", "final"), baseline=base_metrics,
                              pair=pair_names)
    if base_metrics is not None:
        result.comparison = compare_metrics(base_metrics, final_metrics, names, labels=result.labels)
    if pair_names is not None:
        result.confusion = confusion_pair(base_metrics, final_metrics, *pair_names) if base_metrics else \
            confusion_pair(final_metrics, None, *pair_names)
    _write_outputs(result, out_dir)

    grid_items, grid_note = None, ""
    if grid > 0:
        try:
            idx = val_index()
            if predictor is None:
                predictor, _ = _load_predictor(final_ckpt, device=device, top_k=300, batch_size=batch_size,
                                               num_workers=0)
            ids = _grid_ids(idx, pair_names, grid)
            grid_items = _grid_items(idx, _predict_ids(predictor, idx, ids), ids)
        except DataError as exc:
            grid_note = f"Validation images not drawn: {exc}"

    base_map50 = as_number(baseline.get("map50")) if baseline else None
    phase_rows = _phase_rows(summary, base_map50)
    gate_rows = _gate_rows(summary)
    final_text = (f"Final model: **{final.get('phase')}** (validation mAP@0.5 {fmt_value(final.get('map50'))}) "
                  f"-> `{final_ckpt}`. {final.get('reason', '')}")
    intro = [Section("Training phases", "Best validation checkpoint of each phase; Δ is relative to the baseline.\n\n"
                     + final_text, table=phase_rows)]
    intro.append(Section("Gate decisions", "" if gate_rows else "No gates were applied in this run.",
                         table=gate_rows or None, level=3))
    if evaluated:
        intro.append(Section("Evaluated now", "These checkpoints had no metrics.json and were evaluated on the run's "
                             "validation set for this report:\n\n" + "\n".join(f"- `{e}`" for e in evaluated),
                             level=3))
    if grid_note:
        intro.append(Section("Validation images", grid_note, level=3))
    if base_note:
        intro.append(Section("Baseline", base_note, level=3))
    _write_report(result, run, grid_items, f"Training run {summary.get('name', run.name)}", intro=intro)
    return RunReport(run, summary, phase_rows, gate_rows, final_text, result, evaluated)
