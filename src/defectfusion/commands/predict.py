"""``defectfusion predict``: detections of image files, as COCO results, per-image records and drawn images.

:func:`predict` expands files, folders and glob patterns, runs the predictor in batches (with a
progress bar on many images), and writes

    <out>/results.json       COCO results: [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]
    <out>/predictions.json   per image: id, file, size, detections (xyxy pixels, class names, scores)
    <out>/images/<name>      each image with its boxes, class names and scores drawn (images whose
                             longer side is under 640 px are drawn enlarged to 640 px)

COCO ``category_id``: the model predicts contiguous labels ``0 .. C-1`` and remembers the COCO ids
of its training data (models trained or converted with annotations). Those ids are written, unless
an annotations file (its ``categories`` matched by name) or an explicit mapping says otherwise; a
model that remembers none (older folders) writes the label.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.coco import read_categories
from ..data.images import collect_images, load_image
from ..engine.prediction.predictor import ImagePrediction, Predictor, to_coco_results
from ..engine.prediction.tiling import TiledPredictor
from ..errors import DataError
from ..io import atomic_path, atomic_write_json, unique_names
from ..report.plots import draw_detections

#: Images smaller than this (longer side, pixels) are drawn enlarged to it, so labels stay legible.
DRAW_MIN_SIDE = 640


def resolve_category_ids(
    class_names: Sequence[str],
    annotations: str | os.PathLike | None = None,
    category_ids: Sequence[int] | Mapping[str, int] | None = None,
    remembered: Sequence[int] | None = None,
) -> list[int]:
    """The COCO category id of each contiguous label.

    ``annotations``: its categories are matched to the model's classes by name; ``category_ids``:
    one id per label in label order, or ``{class name: id}``; neither: the ids the model remembers
    from its training data (``remembered``), else ``id = label``.
    """
    names = list(class_names)
    if annotations is not None and category_ids is not None:
        raise DataError("give the category ids either through an annotations file or explicitly, not both")
    if annotations is not None:
        cat_names, cat_ids, _ = read_categories(annotations)
        by_name = dict(zip(cat_names, cat_ids, strict=True))
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DataError(
                f"{annotations}: the model's classes {missing} are not among its categories "
                f"{list(by_name)}; use the annotations of the dataset the model was trained on"
            )
        return [int(by_name[n]) for n in names]
    if category_ids is None:
        return [int(i) for i in remembered] if remembered is not None else list(range(len(names)))
    if isinstance(category_ids, Mapping):
        missing = [n for n in names if n not in category_ids]
        if missing:
            raise DataError(f"category id mapping lacks the classes {missing}; it needs one id for each of {names}")
        ids = [category_ids[n] for n in names]
    else:
        ids = list(category_ids)
        if len(ids) != len(names):
            raise DataError(
                f"got {len(ids)} category ids for {len(names)} classes ({', '.join(names)}); give one id per class, "
                f"in class order"
            )
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise DataError(f"category ids must be integers, got {ids}")
    if len(set(ids)) != len(ids):
        raise DataError(f"category ids must be unique, got {ids}")
    return [int(i) for i in ids]


def _image_ids_from_annotations(
    paths: Sequence[Path], annotations: str | os.PathLike
) -> tuple[list[int], list[tuple[int, int] | None]]:
    """COCO ids (and json sizes) of the inputs, matched by ``file_name`` (the path's tail)."""
    _, _, data = read_categories(annotations)
    images = data.get("images") if isinstance(data.get("images"), list) else []
    records = [
        im
        for im in images
        if isinstance(im, dict) and isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)
    ]
    by_tail: dict[str, list[dict[str, Any]]] = {}
    for im in records:
        by_tail.setdefault(Path(im["file_name"]).name, []).append(im)
    ids, sizes, unmatched = [], [], []
    for p in paths:
        posix = p.resolve().as_posix()
        candidates = [
            im for im in by_tail.get(p.name, []) if posix.endswith("/" + Path(im["file_name"]).as_posix().lstrip("./"))
        ]
        if not candidates:
            unmatched.append(str(p))
            continue
        im = candidates[0]
        ids.append(int(im["id"]))
        w, h = im.get("width"), im.get("height")
        sizes.append((w, h) if isinstance(w, int) and isinstance(h, int) else None)
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise DataError(
            f"{len(unmatched)} image(s) are not listed in {annotations}'s 'images' (matched by file_name): {shown}. "
            f"Predict the annotated images only, or give the category ids explicitly instead of the annotations file"
        )
    return ids, sizes


@dataclass
class PredictionRun:
    """What :func:`predict` produced."""

    predictions: list[ImagePrediction]
    class_names: list[str]
    category_ids: list[int]
    threshold: float
    out: Path | None = None
    results_json: Path | None = None
    predictions_json: Path | None = None
    drawn: list[Path] = field(default_factory=list)

    @property
    def num_detections(self) -> int:
        return sum(len(p.detections) for p in self.predictions)

    def counts_per_class(self) -> dict[str, int]:
        counts = dict.fromkeys(self.class_names, 0)
        for p in self.predictions:
            for label in p.detections.labels.tolist():
                counts[self.class_names[label]] += 1
        return counts


def _save_image(image, path: Path) -> None:
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    with atomic_path(path, suffix=path.suffix) as tmp:
        image.save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))


def predict(
    checkpoint: str | os.PathLike | Predictor,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    threshold: float = 0.25,
    top_k: int = 300,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str = "cpu",
    recursive: bool = False,
    annotations: str | os.PathLike | None = None,
    category_ids: Sequence[int] | Mapping[str, int] | None = None,
    draw: bool = True,
    nms: float | None = None,
    progress: bool | None = None,
    tiles: int | None = None,
    overlap: float = 0.2,
    full_image: bool = False,
) -> PredictionRun:
    """Detect objects in images and write the results (see the module docstring for the files).

    Args:
        checkpoint: a detector folder, an ``.onnx`` file, or a ready :class:`Predictor`.
        inputs: image files, folders and glob patterns.
        out: output folder; ``None`` writes nothing.
        threshold: minimum score of a detection (in the json files and on the images).
        annotations: a COCO file of these images: category ids by class name, image ids by file name.
        category_ids: the dataset's category id per class (list in class order, or by name).
        draw: write the images with boxes drawn.
        tiles: sliced inference (:class:`~defectfusion.engine.prediction.tiling.TiledPredictor`): run on
            overlapping ``tiles`` px crops at native resolution (``overlap``: the fraction
            neighbours share), merged by class-wise NMS (at ``nms``, else IoU 0.5);
            ``full_image`` adds the usual whole-image pass. For small objects on large images.
    """
    paths = collect_images(inputs, recursive=recursive)
    if isinstance(checkpoint, (Predictor, TiledPredictor)):
        predictor = checkpoint
        inner = predictor.predictor if isinstance(predictor, TiledPredictor) else predictor
        inner.threshold = float(threshold)
        inner.nms_iou = nms if nms is not None else inner.nms_iou
    else:
        predictor = Predictor.from_checkpoint(
            checkpoint,
            device=device,
            top_k=top_k,
            threshold=threshold,
            batch_size=batch_size,
            num_workers=num_workers,
            nms_iou=nms,
        )
    if tiles is not None:
        inner = predictor.predictor if isinstance(predictor, TiledPredictor) else predictor
        predictor = TiledPredictor(inner, tiles, overlap, full_image=full_image, merge_iou=nms or 0.5)
    cat_ids = resolve_category_ids(
        predictor.class_names, annotations, category_ids, getattr(predictor, "category_ids", None)
    )
    image_ids, sizes = _image_ids_from_annotations(paths, annotations) if annotations is not None else (None, None)
    run = PredictionRun([], predictor.class_names, cat_ids, predictor.threshold)
    if out is not None:
        run.out = Path(out)
        run.out.mkdir(parents=True, exist_ok=True)
    drawn_names = iter(
        unique_names(
            [p.stem for p in paths],
            [".jpg" if p.suffix.lower() in {".jpg", ".jpeg"} else ".png" for p in paths],
            start=1,
        )
    )
    for pred in predictor.predict_files(paths, image_ids, expected_sizes=sizes, progress=progress):
        run.predictions.append(pred)
        name = next(drawn_names)
        if run.out is not None and draw:
            drawn = draw_detections(
                load_image(pred.path),
                pred.detections,
                run.class_names,
                score_threshold=predictor.threshold,
                resize_to=DRAW_MIN_SIDE if max(pred.size) < DRAW_MIN_SIDE else None,
            )
            target = run.out / "images" / name
            _save_image(drawn, target)
            run.drawn.append(target)
    if run.out is not None:
        run.results_json = run.out / "results.json"
        atomic_write_json(run.results_json, to_coco_results(run.predictions, cat_ids), indent=None)
        run.predictions_json = run.out / "predictions.json"
        atomic_write_json(run.predictions_json, _predictions_record(run))
    return run


def _predictions_record(run: PredictionRun) -> dict[str, Any]:
    images = []
    for k, pred in enumerate(run.predictions):
        det = pred.detections
        images.append(
            {
                "image_id": pred.image_id,
                "file": str(pred.path),
                "height": pred.size[0],
                "width": pred.size[1],
                "drawn": str(run.drawn[k]) if k < len(run.drawn) else None,
                "detections": [
                    {
                        "box_xyxy": [round(v, 2) for v in box],
                        "label": label,
                        "class": run.class_names[label],
                        "category_id": run.category_ids[label],
                        "score": round(score, 5),
                    }
                    for box, score, label in zip(
                        det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True
                    )
                ],
            }
        )
    return {
        "threshold": run.threshold,
        "class_names": run.class_names,
        "category_ids": run.category_ids,
        "num_images": len(images),
        "num_detections": run.num_detections,
        "images": images,
    }
