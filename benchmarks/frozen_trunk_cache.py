"""Epoch time of phases 1 and 2 with the frozen trunk read from its cache vs computed every step.

For each setting the script writes a synthetic dataset, builds one fused detector (gates open, so
the fusion computes and learns) and, per phase, two trainers on the same images, seed and start
weights: ``train.cache_frozen: off`` and ``on``. The cache is filled first (timed on its own: it
is one trunk forward per image, once), then whole training epochs of the two trainers are timed
alternately (off, on, on, off, ...) and the medians printed with their ratio:

    <setting> <phase> epoch cached/computed ratio=<x>

Settings: ``demo@256`` (``dinov3_demo``, batch 8, the demo's model) and ``M@640`` (``dinov3_m``,
batch 2, the user's architecture). An epoch is the trainer's own (data loading, forward, loss,
backward, optimiser and EMA steps); validation is not in it.

Usage:  python benchmarks/frozen_trunk_cache.py [--reps 2] [--threads 1] [--skip-m] [--images-m 16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from defectfusion.config import load_config
from defectfusion.data.coco import load_coco
from defectfusion.data.synthetic import generate_synthetic_dataset
from defectfusion.engine.training.distributed import DistInfo
from defectfusion.engine.training.phase_records import build_phase_data
from defectfusion.engine.training.trainer import PhaseTrainer
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.inference import InputSpec

PHASES = ("phase1", "phase2")


def _config(root: Path, preset: str, size: int, batch: int, mode: str):
    overrides = [
        f"model.preset={preset}",
        f"model.image_size=[{size},{size}]",
        f"data.train.annotations={root / 'data' / 'train' / 'annotations.json'}",
        f"data.val.annotations={root / 'data' / 'val' / 'annotations.json'}",
        f"data.batch_size={batch}",
        "data.num_workers=0",
        "data.verify_images=false",
        "train.tensorboard=false",
        f"train.cache_frozen={mode}",
        f"train.cache_dir={root / 'cache'}",
    ]
    return load_config("demo", overrides)


def _trainer(cfg, model, name: str, folder: Path) -> PhaseTrainer:
    train, val = load_coco(cfg.data.train.annotations), load_coco(cfg.data.val.annotations)
    meta = model.meta
    data = build_phase_data(cfg, train, val, InputSpec.of(meta))
    return PhaseTrainer(copy.deepcopy(model), name, cfg.phases[name], cfg, data, folder, DistInfo(), progress=False)


def _epoch_seconds(trainer: PhaseTrainer) -> float:
    start = time.perf_counter()
    trainer.train_epoch(0)
    return time.perf_counter() - start


def measure(label: str, preset: str, size: int, batch: int, images: int, reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_synthetic_dataset(root / "data", train=images, val=max(2, images // 4), size=size, seed=0)
        cfgs = {mode: _config(root, preset, size, batch, mode) for mode in ("off", "on")}
        names = list(load_coco(cfgs["off"].data.train.annotations).class_names)
        torch.manual_seed(0)
        model = build_detector(cfgs["off"].model, names)
        model = add_fusion(model, cfgs["off"].fusion, random_text_embeddings(len(names), 384, seed=0))
        with torch.no_grad():
            for head in model.fusion_heads():
                head.gate.fill_(0.1)
        for name in PHASES:
            trainers = {mode: _trainer(cfgs[mode], model, name, root / mode / name) for mode in cfgs}
            start = time.perf_counter()
            trainers["on"].prepare_cache()
            fill = time.perf_counter() - start
            cache = trainers["on"].cache
            assert cache is not None, "the phase did not cache: see its one-line reason"
            trainers["off"].prepare_cache()
            _epoch_seconds(trainers["off"]), _epoch_seconds(trainers["on"])  # warm-up
            times = {"off": [], "on": []}
            for rep in range(reps):
                order = ("off", "on") if rep % 2 == 0 else ("on", "off")
                for mode in order:
                    times[mode].append(_epoch_seconds(trainers[mode]))
            off, on = statistics.median(times["off"]), statistics.median(times["on"])
            steps = trainers["on"].steps_per_epoch
            print(
                f"{label} {name} ({preset}, {images} images, batch {batch}, {steps} steps): epoch {off:.2f} s "
                f"computing the trunk, {on:.2f} s from the cache; filling it took {fill:.2f} s once "
                f"({cache.computed} images, {cache.store.size_on_disk() / 1e6:.0f} MB)"
            )
            print(f"{label} {name} epoch cached/computed ratio={on / off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2, help="timed epochs per mode and phase (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    parser.add_argument("--skip-m", action="store_true", help="only the demo preset")
    parser.add_argument("--images-demo", type=int, default=64, help="training images of the demo setting")
    parser.add_argument("--images-m", type=int, default=16, help="training images of the M@640 setting")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.reps} epochs per mode")
    measure("demo@256", "dinov3_demo", 256, 8, args.images_demo, args.reps)
    if not args.skip_m:
        measure("M@640", "dinov3_m", 640, 2, args.images_m, args.reps)


if __name__ == "__main__":
    main()
