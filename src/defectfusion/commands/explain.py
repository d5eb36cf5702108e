"""``defectfusion explain``: maps and per-detection numbers of images, and how well the maps localise.

Images come as files, folders and glob patterns, or as a COCO file (``annotations``) whose
images are explained. With annotations, every map kind is scored against the boxes (pointing
game, AUROC; :mod:`defectfusion.engine.explain.map_quality`) and a summary page (md + html) shows the
quality table and the best and worst examples. Each image's files go to ``out/<image stem>/``
(``out`` itself for a single image without annotations); maps are written as they are made and
not kept, so a folder of thousands of images needs no more memory than one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.coco import load_coco
from ..data.descriptions import resolve_pair
from ..data.images import collect_images, load_image
from ..engine.explain.explain_tiles import explain_tiled
from ..engine.explain.explainer import DEFAULT_MAP_KIND, explain_image, require_fused
from ..engine.explain.faithfulness import (
    DEFAULT_STEPS,
    DetectionFaithfulness,
    FaithfulnessSummary,
    deletion_insertion,
    summarize_faithfulness,
)
from ..engine.explain.map_comparison import MapComparison, compare_kinds
from ..engine.explain.map_quality import (
    CONTROL_KIND,
    DEFAULT_TOLERANCE,
    ImagePairs,
    PairQuality,
    QualitySummary,
    best_box_on_object,
    image_pairs,
    summarize_quality,
)
from ..engine.prediction.onnx_backend import is_onnx_checkpoint
from ..engine.training.phase_records import find_run_folder
from ..errors import CheckpointError, ConfigError
from ..io import unique_names
from ..models.checkpoint import load_detector
from ..report.explain import ExplainFiles, write_explanation
from ..report.explain_summary import Example, SummaryFiles, write_summary
from ..report.map_readings import choose_default_kind
from ..structures import Explanation
from .evaluate import configured_pair

THUMBNAIL = 160  # pixels on the long side of the example thumbnails the summary keeps per class


@dataclass
class ExplainedImage:
    """One explained image: its explanation without the maps (they are in its files), its (image, class)
    pairs per map kind (``wrong``: each class's map against another class's boxes), and the deletion and
    insertion curves of its detailed detections when faithfulness was measured on it."""

    explanation: Explanation
    files: ExplainFiles
    pairs: dict[str, list[PairQuality]] = field(default_factory=dict)
    wrong: dict[str, list[PairQuality]] = field(default_factory=dict)
    faithfulness: list[DetectionFaithfulness] = field(default_factory=list)


@dataclass
class ExplainResult:
    """Every explained image; with annotations, the quality per map kind, each kind against the
    detections-only control (``comparisons``), the faithfulness test (when run) and the summary files."""

    images: list[ExplainedImage]
    out: Path
    quality: dict[str, QualitySummary] = field(default_factory=dict)
    default_kind: str = DEFAULT_MAP_KIND
    summary: SummaryFiles | None = None
    comparisons: dict[str, MapComparison] = field(default_factory=dict)
    faithfulness: FaithfulnessSummary | None = None
    # the kind that beats the detections-only control on faithfulness (None: none does, or not measured), and why
    chosen_kind: str | None = None
    chosen_why: str = ""

    def files(self) -> list[Path]:
        paths = [p for item in self.images for p in item.files.all()]
        return paths + (self.summary.all() if self.summary else [])


def _without_maps(expl: Explanation) -> Explanation:
    detections = [replace(d, maps={}) for d in expl.detections]
    return replace(expl, class_maps={}, detections=detections)


def _thumbnail(expl: Explanation, labels: Sequence[int], kind: str) -> tuple[np.ndarray, dict[int, np.ndarray], float]:
    """A small copy of the image and of the ``kind`` maps of ``labels``, for the summary's grid."""
    H, W = expl.size
    scale = min(1.0, THUMBNAIL / max(H, W))
    size = (max(1, round(H * scale)), max(1, round(W * scale)))
    image = torch.from_numpy(expl.image).permute(2, 0, 1)[None].float()
    small = F.interpolate(image, size=size, mode="area")[0].permute(1, 2, 0).round().byte().numpy()
    maps = expl.class_maps[kind]
    picked = {int(c): F.interpolate(maps[int(c)][None, None], size=size, mode="area")[0, 0].numpy() for c in labels}
    return small, picked, scale


def _inputs(images, annotations, images_dir) -> tuple[list[Path], list[int | None], object]:
    if annotations is None:
        items = [images] if isinstance(images, (str, os.PathLike)) else list(images or [])
        return collect_images(items), [], None
    index = load_coco(annotations, images_dir)
    return [rec.path for rec in index.images], [rec.id for rec in index.images], index


def explain(
    checkpoint: str | os.PathLike,
    images: str | os.PathLike | Sequence[str | os.PathLike] | None,
    out: str | os.PathLike,
    *,
    annotations: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    threshold: float = 0.3,
    max_detections: int = 8,
    device: str = "cpu",
    pair: Sequence[str] | None = None,
    limit: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    examples: int = 4,
    all_figures: bool = False,
    save_maps: bool = False,
    progress: bool | None = None,
    tiles: int | None = None,
    overlap: float = 0.2,
    faithfulness: int = 0,
    steps: int = DEFAULT_STEPS,
) -> ExplainResult:
    """Explain images (files, folders, patterns) or the images of a COCO file, and score the maps on its boxes.

    Args:
        annotations: a COCO json; its images are explained (``images`` may then be None) and every
            map kind is scored against its boxes.
        limit: explain at most this many images (the first ones in order).
        pair: the confusable pair (default: the model's descriptions' ``confusable_pair``).
        examples: best and worst examples shown in the summary.
        all_figures, save_maps: for several images, also write the similarity-map and text-match
            figures and the maps (``.npz``, a few MB per image); a single image always gets them.
        tiles, overlap: explain each image tile by tile at native resolution (``tiles`` px,
            ``overlap`` shared), maps stitched and detections merged
            (:mod:`~defectfusion.engine.explain.explain_tiles`).
        faithfulness: run the deletion / insertion test (:mod:`~defectfusion.engine.explain.faithfulness`) on the
            detailed detections of the first this many images (each costs a few hundred forward passes);
            ``steps``: its schedule of pixel fractions.
    """
    path = Path(checkpoint).expanduser()
    if is_onnx_checkpoint(path):
        raise CheckpointError(
            f"{path} is an exported ONNX model; explain needs the PyTorch detector folder it was "
            f"exported from (the maps need the model's internal features)"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"the score threshold must be in [0, 1], got {threshold}")
    if limit is not None and limit < 1:
        raise ConfigError(f"explain: limit must be at least 1, got {limit}")
    if faithfulness < 0 or steps < 1:
        raise ConfigError(f"explain: faithfulness images must be >= 0 and steps >= 1, got {faithfulness} and {steps}")
    if faithfulness and tiles is not None:
        raise ConfigError(
            "explain: the faithfulness test masks whole images, not tiles; drop --faithfulness or --tiles"
        )
    paths, image_ids, index = _inputs(images, annotations, images_dir)
    paths, image_ids = paths[:limit], image_ids[:limit]
    model = load_detector(path, device=device)
    require_fused(model)
    names = list(model.class_names)
    if index is not None and list(index.class_names) != names:
        raise ConfigError(
            f"{annotations}: its classes {list(index.class_names)} are not the model's {names} (same names, same order)"
        )
    fusion = model.meta.fusion
    chosen_pair = resolve_pair(
        pair, names, [getattr(fusion, "descriptions", None)], configured_pair(find_run_folder(path))
    )
    out = Path(out)
    single = len(paths) == 1 and index is None
    folders = [out] if single else [out / n for n in unique_names([p.stem for p in paths])]
    show = progress if progress is not None else len(paths) > 1
    results: list[ExplainedImage] = []
    gallery: list[Example] = []
    contrast: list[Example] = []  # the confusable pair's contrast maps, for their own examples
    for i, (image_path, folder) in enumerate(
        tqdm(list(zip(paths, folders, strict=True)), desc="explain", unit="img", disable=not show, leave=False)
    ):
        options = {"threshold": threshold, "max_detections": max_detections, "device": device, "pair": chosen_pair}
        pixels = load_image(image_path).as_subclass(torch.Tensor)
        if tiles is not None:
            expl = explain_tiled(model, pixels, tiles, overlap, **options)
        else:
            expl = explain_image(model, pixels, **options)
        expl.source = str(image_path)
        scored, faithful = ImagePairs(), []
        if index is not None:
            boxes, labels = (t.numpy() for t in index.training_targets(image_ids[i]))
            scored = _score_maps(expl, image_ids[i], boxes, labels, tolerance, chosen_pair)
            if len(labels):
                small, small_maps, scale = _thumbnail(expl, sorted(set(labels.tolist())), DEFAULT_MAP_KIND)
                for q in scored.right.get(DEFAULT_MAP_KIND, []):
                    gallery.append(Example(q, small, small_maps[q.label], boxes[labels == q.label] * scale, folder))
                pair_labels = sorted({q.label for q in scored.right.get("contrast", [])})
                if pair_labels:
                    _, pair_maps, _ = _thumbnail(expl, pair_labels, "contrast")
                    for q in scored.right["contrast"]:
                        contrast.append(Example(q, small, pair_maps[q.label], boxes[labels == q.label] * scale, folder))
        if i < faithfulness:
            detailed = [d for d in expl.detections if d.maps]
            faithful = deletion_insertion(
                model, pixels, [(d.box, d.label) for d in detailed], [d.maps for d in detailed], steps=steps
            )
        written = write_explanation(expl, folder, all_figures=single or all_figures, save_maps=single or save_maps)
        results.append(ExplainedImage(_without_maps(expl), written, scored.right, scored.wrong, faithful))
    result = ExplainResult(results, out)
    faithful = {
        image_ids[i] if image_ids else i: item.faithfulness for i, item in enumerate(results) if item.faithfulness
    }
    if faithful:
        result.faithfulness = summarize_faithfulness(faithful)
    if index is not None:
        kinds = list(results[0].pairs) if results else []
        right = {k: [q for item in results for q in item.pairs.get(k, [])] for k in kinds}
        wrong = {k: [q for item in results for q in item.wrong.get(k, [])] for k in kinds}
        result.quality = {k: summarize_quality(k, right[k], names) for k in kinds}
        result.comparisons = compare_kinds(right, wrong, control=CONTROL_KIND)
        faithful = result.faithfulness.to_dict()["kinds"] if result.faithfulness else None
        result.chosen_kind, result.chosen_why = choose_default_kind(result.quality, result.comparisons, faithful)
        result.summary = write_summary(
            out,
            result.quality,
            DEFAULT_MAP_KIND,
            results[0].explanation.map_kinds if results else {},
            gallery,
            names,
            examples=examples,
            source=str(annotations),
            tolerance=tolerance,
            comparisons=result.comparisons,
            faithfulness=faithful,
            pair_gallery=contrast,
            pair=chosen_pair,
        )
    return result


def _score_maps(
    expl: Explanation, image_id: int, boxes: np.ndarray, labels: np.ndarray, tolerance: float, pair
) -> ImagePairs:
    """Every map kind against the image's boxes (and each class's map against the other classes' boxes), with
    whether the detector's best box of each class lay on an object of that class; the ``contrast`` kind only
    for the confusable pair's classes, the only ones it is made for."""
    dets = expl.detections
    detected = best_box_on_object(
        np.array([d.box for d in dets], dtype=np.float64).reshape(-1, 4),
        np.array([d.score for d in dets], dtype=np.float64),
        np.array([d.label for d in dets], dtype=np.int64),
        boxes,
        labels,
    )
    scored = image_pairs(expl.class_maps, image_id, boxes, labels, detected=detected, tolerance=tolerance)
    if "contrast" in scored.right:
        members = {expl.class_names.index(name) for name in pair} if pair else set()
        scored.right["contrast"] = [q for q in scored.right["contrast"] if q.label in members]
        scored.wrong["contrast"] = [q for q in scored.wrong["contrast"] if q.label in members]
    return scored
