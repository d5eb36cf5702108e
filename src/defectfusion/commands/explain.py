"""``defectfusion explain``: maps and per-detection numbers of images, and how well the maps localise.

Images come as files, folders and glob patterns, or as a COCO file (``annotations``) whose
images are explained. With annotations, every map kind is scored against the boxes (pointing
game, AUROC; :mod:`defectfusion.engine.map_quality`) and a summary page (md + html) shows the
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
from ..engine.explain_tiles import explain_tiled
from ..engine.explainer import DEFAULT_MAP_KIND, explain_image, require_fused
from ..engine.map_quality import DEFAULT_TOLERANCE, PairQuality, QualitySummary, explanation_pairs, summarize_quality
from ..engine.onnx_backend import is_onnx_checkpoint
from ..engine.phase_records import find_run_folder
from ..errors import CheckpointError, ConfigError
from ..io import unique_names
from ..models.checkpoint import load_detector
from ..report.explain import ExplainFiles, write_explanation
from ..report.explain_summary import Example, SummaryFiles, write_summary
from ..structures import Explanation
from .evaluate import configured_pair

THUMBNAIL = 160  # pixels on the long side of the example thumbnails the summary keeps per class


@dataclass
class ExplainedImage:
    """One explained image: its explanation without the maps (they are in its files), and its pairs."""

    explanation: Explanation
    files: ExplainFiles
    pairs: dict[str, list[PairQuality]] = field(default_factory=dict)


@dataclass
class ExplainResult:
    """Every explained image, the quality per map kind (with annotations) and the summary files."""

    images: list[ExplainedImage]
    out: Path
    quality: dict[str, QualitySummary] = field(default_factory=dict)
    default_kind: str = DEFAULT_MAP_KIND
    summary: SummaryFiles | None = None

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
            ``overlap`` shared), maps stitched and detections merged (:mod:`~defectfusion.engine.explain_tiles`).
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
        pairs: dict[str, list[PairQuality]] = {}
        if index is not None:
            boxes, labels = index.training_targets(image_ids[i])
            pairs = explanation_pairs(expl.class_maps, image_ids[i], boxes.numpy(), labels.numpy(), tolerance=tolerance)
            if len(labels):
                small, small_maps, scale = _thumbnail(expl, sorted(set(labels.tolist())), DEFAULT_MAP_KIND)
                for q in pairs.get(DEFAULT_MAP_KIND, []):
                    gallery.append(
                        Example(q, small, small_maps[q.label], (boxes[labels == q.label] * scale).numpy(), folder)
                    )
        written = write_explanation(expl, folder, all_figures=single or all_figures, save_maps=single or save_maps)
        results.append(ExplainedImage(_without_maps(expl), written, pairs))
    result = ExplainResult(results, out)
    if index is not None:
        kinds = list(results[0].pairs) if results else []
        all_pairs = {k: [q for item in results for q in item.pairs.get(k, [])] for k in kinds}
        result.quality = {k: summarize_quality(k, all_pairs[k], names) for k in kinds}
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
        )
    return result
