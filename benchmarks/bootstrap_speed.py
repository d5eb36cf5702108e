"""The paired bootstrap of a study: COCOeval per resampled dataset vs matching once, side by side.

A demo-sized case (160 test images of 256 px, six classes, 1-5 defects each, some crowd regions;
13 models of 300 detections per image) is scored on the same draws two ways:

- reference: what ``engine/evaluation/bootstrap.py`` did before, kept here: per draw, a resampled COCO
  dataset (draw position ``n`` becomes image id ``n + 1``, ground truth and detections copied)
  and faster-coco-eval's COCOeval for every model (``coco_class_ap``), on the first
  ``--reference-draws`` draws, extrapolated per draw;
- new: ``resample`` (each model matched once, every draw a weighted accumulation), on ``--draws``.

It checks that both agree on the common draws (AP, mAP and confusion counts) and prints the
seconds per draw and their ratio:

    reference/new per-draw ratio=<x>

The detections are synthetic, made from the ground truth with noise: per model a recall, a
localisation noise, a class-confusion rate and score distributions for hits and misses (each
image's 300 detections are mostly low-scored background, like a DETR's top-300 queries). Scores
are float64 without ties, so that the tie order (by image id here, by draw position in COCO on a
resample) cannot make the two differ; ``--float32`` rounds them as a detector's output is rounded,
and ties appear.

Usage:  python benchmarks/bootstrap_speed.py [--draws 2000] [--reference-draws 20] [--threads 1] [--float32]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO
from threadpoolctl import threadpool_limits

from defectfusion.engine.evaluation.bootstrap import Resampled, image_draws, resample
from defectfusion.engine.evaluation.evaluator import DetectionEvaluator, coco_class_ap
from defectfusion.engine.evaluation.metrics import mean_or_none
from defectfusion.structures import Detections

CLASSES = ["NORMAL", "DEFORMACIONES", "ROTURA_FRACTURA", "RAYONES_ARANAZOS", "PERFORACIONES", "CONTAMINACION"]
SIZE = 256


def ground_truth(images: int, rng: np.random.Generator) -> dict[str, Any]:
    """COCO ground truth: 1-5 defects per image (10-90 px), one image in 20 with a crowd region."""
    anns = []
    for image_id in range(1, images + 1):
        for _ in range(rng.integers(1, 6)):
            w, h = rng.uniform(10, 90, 2)
            x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
            anns.append({"image_id": image_id, "category_id": int(rng.integers(1, 7)), "bbox": [x, y, w, h]})
        if rng.random() < 0.05:
            anns.append({"image_id": image_id, "category_id": int(rng.integers(1, 7)), "bbox": [0, 0, 60, 60],
                         "iscrowd": 1})  # fmt: skip
    for i, a in enumerate(anns):
        a.update(id=i + 1, area=a["bbox"][2] * a["bbox"][3], iscrowd=a.get("iscrowd", 0))
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": SIZE, "height": SIZE} for i in range(1, images + 1)],
        "annotations": anns,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)],
    }


def model_detections(gt: dict[str, Any], per_image: int, quality: float, rng: np.random.Generator):
    """One synthetic model: hits around the ground truth (recall and noise from ``quality`` in
    [0, 1]), duplicates, confused classes, and low-scored background boxes up to ``per_image``."""
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out = {}
    for img in gt["images"]:
        boxes, scores, labels = [], [], []
        for a in by_image.get(img["id"], []):
            if a["iscrowd"] or rng.random() > 0.55 + 0.4 * quality:
                continue
            x, y, w, h = a["bbox"]
            for _ in range(1 + int(rng.random() < 0.3)):  # sometimes a duplicate
                j = rng.normal(0, 0.18 - 0.12 * quality, 4) * [w, h, w, h]
                boxes.append([x + j[0], y + j[1], x + j[0] + max(w + j[2], 2), y + j[1] + max(h + j[3], 2)])
                confused = rng.random() < 0.15 - 0.1 * quality
                labels.append(int(rng.integers(0, 6)) if confused else a["category_id"] - 1)
                scores.append(rng.beta(2 + 4 * quality, 2))
        rest = per_image - len(boxes)
        xy = rng.uniform(0, SIZE - 20, (rest, 2))
        wh = rng.uniform(8, 100, (rest, 2))
        boxes += np.concatenate([xy, np.minimum(xy + wh, SIZE)], axis=1).tolist()
        scores += rng.beta(1, 12, rest).tolist()  # background queries: mostly near 0, a few high
        labels += rng.integers(0, 6, rest).tolist()
        order = np.argsort(-np.asarray(scores), kind="stable")
        out[img["id"]] = Detections(
            torch.tensor(boxes, dtype=torch.float64)[order],
            torch.tensor(scores, dtype=torch.float64)[order],
            torch.tensor(labels)[order],
        )
    return out


# ---------------------------------------------------------------------------- the reference (old code)


def _quiet(*_args, **_kwargs) -> None:
    pass


def _resampled_gt(gt: dict[str, Any], ids) -> dict[str, Any]:
    """The ground truth of a resample: draw position ``n`` becomes image id ``n + 1``."""
    images = {img["id"]: img for img in gt["images"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    new_images, new_anns = [], []
    for new_id, image_id in enumerate(ids, start=1):
        new_images.append({**images[int(image_id)], "id": new_id})
        for ann in by_image.get(int(image_id), []):
            new_anns.append({**ann, "id": len(new_anns) + 1, "image_id": new_id})
    return {"images": new_images, "annotations": new_anns, "categories": gt["categories"]}


def _records(detections: dict[int, Detections], cat_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    records = {}
    for image_id, det in detections.items():
        boxes, scores, labels = det.boxes.double().tolist(), det.scores.double().tolist(), det.labels.tolist()
        records[int(image_id)] = [
            {"category_id": cat_ids[int(lab)], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)}
            for b, s, lab in zip(boxes, scores, labels, strict=True)
        ]
    return records


def reference(gt: dict[str, Any], models: dict[str, dict[int, Detections]], draws: np.ndarray) -> dict[str, Resampled]:
    """The bootstrap as it was: COCOeval on every resampled dataset, for every model."""
    base = DetectionEvaluator(dict(gt)).dataset
    cat_ids = [int(c["id"]) for c in base["categories"]]
    C, D = len(cat_ids), len(draws)
    records, per_image = {}, {}
    for name, detections in models.items():
        records[name] = _records(detections, cat_ids)
        ev = DetectionEvaluator(base)
        ids = [int(i) for i in ev.image_ids]
        ev.process(ids, [detections.get(i, Detections.empty()) for i in ids])
        per_image[name] = ev.confusion_per_image()
    out = {
        name: Resampled(
            np.full(D, np.nan),
            np.full(D, np.nan),
            np.full((D, C), np.nan),
            np.full((D, C), np.nan),
            np.zeros((D, C + 1, C + 1), dtype=np.int64),
        )  # fmt: skip
        for name in models
    }
    for d, ids in enumerate(draws):
        coco_gt = COCO(_resampled_gt(base, ids), print_function=_quiet)
        new_ids = list(range(1, len(ids) + 1))
        for name in models:
            results = [
                {**r, "image_id": new_id}
                for new_id, image_id in enumerate(ids, start=1)
                for r in records[name].get(int(image_id), ())
            ]
            ap50, ap, _ = coco_class_ap(coco_gt, results, new_ids, cat_ids)
            target = out[name]
            target.ap50[d] = [np.nan if v is None else v for v in ap50]
            target.ap[d] = [np.nan if v is None else v for v in ap]
            m50, m = mean_or_none(ap50), mean_or_none(ap)
            target.map50[d] = np.nan if m50 is None else m50
            target.map[d] = np.nan if m is None else m
            target.confusion[d] = sum(per_image[name][int(i)] for i in ids)
    return out


# ---------------------------------------------------------------------------- comparison


def largest_difference(old: dict[str, Resampled], new: dict[str, Resampled], rows: int) -> tuple[float, bool]:
    """Largest |old - new| over every model's AP and mAP on the first ``rows`` draws (NaN must match
    NaN), and whether the confusion counts are identical."""
    worst, same_counts = 0.0, True
    for name, o in old.items():
        n = new[name]
        for a, b in ((o.map50, n.map50), (o.map, n.map), (o.ap50, n.ap50), (o.ap, n.ap)):
            b = b[:rows]
            if not np.array_equal(np.isnan(a), np.isnan(b)):
                return float("inf"), False
            worst = max(worst, float(np.nanmax(np.abs(a - b), initial=0.0)))
        same_counts &= bool(np.array_equal(o.confusion, n.confusion[:rows]))
    return worst, same_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=2000, help="draws for the new method (default 2000)")
    parser.add_argument("--reference-draws", type=int, default=20, help="draws for the reference (default 20)")
    parser.add_argument("--images", type=int, default=160, help="test images (default 160, the demo's)")
    parser.add_argument("--models", type=int, default=13, help="models scored on every draw (default 13)")
    parser.add_argument("--detections", type=int, default=300, help="detections per image (default 300)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (1 is steadiest on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--float32", action="store_true", help="scores rounded to float32, as a detector gives them (ties appear)"
    )
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    gt = ground_truth(args.images, rng)
    models = {
        f"model{k:02d}": model_detections(gt, args.detections, q, rng)
        for k, q in enumerate(np.linspace(0.2, 0.9, args.models))
    }
    if args.float32:
        models = {
            name: {i: Detections(d.boxes, d.scores.float(), d.labels) for i, d in dets.items()}
            for name, dets in models.items()
        }
    scores = np.concatenate([det.scores.double().numpy() for dets in models.values() for det in dets.values()])
    print(
        f"{args.images} images, {len(gt['annotations'])} ground-truth boxes, {len(CLASSES)} classes, "
        f"{args.models} models x {args.detections} detections per image ({scores.size} in all, "
        f"{scores.size - np.unique(scores).size} tied scores), {args.threads} BLAS thread(s)"
    )
    draws = image_draws([img["id"] for img in gt["images"]], args.draws, seed=0)
    ref_rows = min(args.reference_draws, args.draws)

    with threadpool_limits(args.threads):
        start = time.perf_counter()
        new_small = resample(gt, models, draws[:ref_rows])
        new_small_s = time.perf_counter() - start
        start = time.perf_counter()
        new = resample(gt, models, draws)
        new_s = time.perf_counter() - start
        start = time.perf_counter()
        old = reference(gt, models, draws[:ref_rows])
        old_s = time.perf_counter() - start

    worst, same_counts = largest_difference(old, new, ref_rows)
    worst_small, _ = largest_difference(old, new_small, ref_rows)
    old_per, new_per = old_s / ref_rows, new_s / args.draws
    print(f"reference (COCOeval per resample): {ref_rows} draws in {old_s:.1f} s = {old_per * 1e3:.1f} ms per draw")
    print(f"new (matched once): {ref_rows} draws in {new_small_s:.2f} s (mostly the matching, done once)")
    print(f"new (matched once): {args.draws} draws in {new_s:.2f} s = {new_per * 1e3:.2f} ms per draw")
    print(
        f"agreement on the {ref_rows} common draws: largest |AP difference| {max(worst, worst_small):.1e}, "
        f"confusion counts {'identical' if same_counts else 'DIFFERENT'}"
    )
    print(f"reference/new per-draw ratio={old_per / new_per:.0f}")


if __name__ == "__main__":
    main()
