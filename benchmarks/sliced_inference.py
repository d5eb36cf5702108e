"""Sliced inference on large images with small defects: resized vs tiled vs tiled + full, side by side.

The setting: 2048 px surfaces with several 12-48 px defects (``synth --defect-scale small``). A
detector at 256 px sees the whole image shrunk 8x (a 24 px defect becomes 3 px); tiled, it sees
256 px crops at native resolution. The script

1. generates large train / held-out images (``generate_synthetic_dataset(..., defect_scale="small")``);
2. cuts the training images into 256 px tiles with ``data slice`` (``slice_dataset``; a share of
   the tiles without defects kept as negatives), and the held-out ones likewise for the
   training run's own validation;
3. trains the CPU scratch preset (``scratch_cpu``: the demo's ~1.4 M-parameter DINOv3-ViT at
   256 px) on the tiles for ``--epochs`` (or takes ``--checkpoint``);
4. evaluates the trained detector on the held-out *large* images three ways, one after the other
   in this process: ``resized`` (the usual pass: the image resized to 256 px), ``tiled``
   (:class:`~defectfusion.engine.prediction.tiling.TiledPredictor`, 256 px tiles, overlap 0.2, class-wise
   NMS) and ``tiled+full`` (tiles plus the resized pass), scored by
   ``defectfusion.engine.evaluation.validation.evaluate_on_index`` (COCO mAP@0.5 through the project's
   evaluator; maxDets 100 per image) and the pooled recall at each class's best-F1 point (every
   box here is small: 12-48 px on a 2048 px image). It prints one row per mode, the time per
   image and the time ratio to ``resized``, and writes ``OUT/results.json``.

Usage:
    python benchmarks/sliced_inference.py                 # 2048 px, 8 train / 4 held-out images, 12 epochs
    python benchmarks/sliced_inference.py --quick         # 1024 px, 3 / 2 images, 2 epochs: a smoke run
    python benchmarks/sliced_inference.py --checkpoint runs/x/baseline/best --val-images 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from defectfusion.commands.data_slice import slice_dataset
from defectfusion.commands.synth import synth
from defectfusion.commands.train import train
from defectfusion.data.coco import load_coco
from defectfusion.engine.evaluation.validation import evaluate_on_index
from defectfusion.engine.prediction.predictor import Predictor
from defectfusion.engine.prediction.tiling import TiledPredictor
from defectfusion.structures import Metrics


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/sliced_inference"))
    p.add_argument("--checkpoint", type=Path, default=None, help="a detector trained at --tile px: skip training")
    p.add_argument("--size", type=int, default=2048, help="side of the large images (default: 2048)")
    p.add_argument("--train-images", type=int, default=8)
    p.add_argument("--val-images", type=int, default=4)
    p.add_argument("--tile", type=int, default=256, help="tile side, and the detector's input size (default: 256)")
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=12, help="training epochs over the tiles (default: 12)")
    p.add_argument("--empty-fraction", type=float, default=0.15, help="share of defect-free tiles trained on")
    p.add_argument("--threshold", type=float, default=0.05, help="score threshold of every mode (default: 0.05)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="1024 px, 3 train / 2 held-out images, 2 epochs")
    args = p.parse_args()
    if args.quick:
        args.size, args.train_images, args.val_images, args.epochs = 1024, 3, 2, 2
    return args


def pooled_recall(metrics: Metrics) -> float | None:
    """Recall over all classes' boxes: each class's recall at its best-F1 point, weighted by its boxes."""
    rows = [c for c in metrics.per_class.values() if c.num_gt and c.recall is not None]
    total = sum(c.num_gt for c in rows)
    return sum(c.recall * c.num_gt for c in rows) / total if total else None


def train_on_tiles(args: argparse.Namespace, data: Path) -> Path:
    tiles = {}
    for split in ("train", "val"):
        s = slice_dataset(
            data / split / "annotations.json",
            args.out / f"tiles_{split}",
            tile=args.tile,
            overlap=args.overlap,
            empty_fraction=args.empty_fraction,
            seed=args.seed,
            progress=False,
        )
        print(f"{split}: {s.num_source_images} images -> {s.num_tiles} tiles, {s.boxes_kept} boxes")
        tiles[split] = s.annotations
    overrides = [
        f"data.train.annotations={tiles['train']}",
        f"data.val.annotations={tiles['val']}",
        f"model.image_size=[{args.tile},{args.tile}]",
        f"phases.baseline.epochs={args.epochs}",
        f"train.eval_every={args.epochs}",
        "train.tensorboard=false",
        f"seed={args.seed}",
    ]
    started = time.perf_counter()
    result = train("scratch_cpu", args.out / "run", overrides=overrides, progress=True)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - started:.0f} s")
    return result.out / "baseline" / "best"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    synth(
        data,
        train=args.train_images,
        val=args.val_images,
        size=args.size,
        seed=args.seed,
        defect_scale="small",
        progress=False,
    )
    checkpoint = args.checkpoint or train_on_tiles(args, data)
    index = load_coco(data / "val" / "annotations.json")
    base = Predictor.from_checkpoint(checkpoint, top_k=100, threshold=args.threshold, batch_size=8)
    modes = {
        "resized": base,
        "tiled": TiledPredictor(base, args.tile, args.overlap),
        "tiled+full": TiledPredictor(base, args.tile, args.overlap, full_image=True),
    }
    rows = {}
    for name, predictor in modes.items():
        started = time.perf_counter()
        metrics, _ = evaluate_on_index(predictor, index, progress=False)
        seconds = (time.perf_counter() - started) / len(index)
        rows[name] = {
            "map50": metrics.map50,
            "recall": pooled_recall(metrics),
            "s_per_image": seconds,
            "num_detections": metrics.num_detections,
            "num_ground_truth": metrics.num_ground_truth,
        }
    print(f"\n{len(index)} held-out {args.size} px images, {rows['resized']['num_ground_truth']} boxes of 12-48 px")
    print(f"{'mode':<12} {'mAP@0.5':>8} {'recall':>7} {'s/img':>7} {'time ratio':>10}")
    for name, r in rows.items():
        fmt = lambda v: "   n/a" if v is None else f"{v:.3f}"  # noqa: E731
        ratio = r["s_per_image"] / rows["resized"]["s_per_image"]
        print(f"{name:<12} {fmt(r['map50']):>8} {fmt(r['recall']):>7} {r['s_per_image']:7.2f} {ratio:10.1f}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "modes": rows}, indent=2))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
