"""What a phase-1 training step costs next to a full training step, measured side by side.

Phase 1 trains only the fusion heads: the frozen trunk builds no autograd graph, so a step should
cost little more than a forward pass. For each setting the script builds one fused detector,
alternates a phase-1 step (fusion trainable) with a full step (every group trainable) on the
same batch, and prints the medians and their ratio. The last line is the DINOv3-M setting:

    M@640 phase1/full ratio=<x>

Usage:  python benchmarks/phase_step_cost.py [--iters 5] [--threads 1] [--skip-m]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.engine.training.loss import install_deim_loss
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.groups import GROUPS, set_trainable

CLASSES = ["NORMAL", "DEFORMACIONES", "ROTURA_FRACTURA", "RAYONES_ARANAZOS", "PERFORACIONES", "CONTAMINACION"]


def random_batch(batch: int, size: int, boxes: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    labels = []
    for _ in range(batch):
        centers = torch.rand(boxes, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(boxes, 2, generator=generator) * 0.2 + 0.05
        labels.append(
            {
                "class_labels": torch.randint(0, len(CLASSES), (boxes,), generator=generator),
                "boxes": torch.cat([centers, sizes], dim=1),
            }
        )
    return pixels, labels


def _optimizer(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def measure(preset: str, size: int, batch: int, iters: int, warmup: int = 2) -> tuple[float, float]:
    torch.manual_seed(0)
    base = build_detector(ModelConfig(preset=preset, image_size=(size, size)), CLASSES)
    model = add_fusion(base, FusionConfig(), random_text_embeddings(len(CLASSES), 512, seed=0))
    with torch.no_grad():
        for head in model.fusion_heads():
            head.gate.fill_(0.1)  # an open gate: the fusion really computes and backpropagates
    install_deim_loss(model)
    model.train()
    pixels, labels = random_batch(batch, size)

    set_trainable(model, ["fusion"])
    phase1_opt = _optimizer(model)
    set_trainable(model, GROUPS)
    full_opt = _optimizer(model)

    def step(groups, optimizer) -> float:
        set_trainable(model, groups)
        torch.manual_seed(1)  # the same denoising queries for both kinds of step
        start = time.perf_counter()
        loss = model(pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    phase1, full = [], []
    for i in range(warmup + iters):
        t1 = step(["fusion"], phase1_opt)
        t2 = step(GROUPS, full_opt)
        if i >= warmup:
            phase1.append(t1)
            full.append(t2)
    return statistics.median(phase1), statistics.median(full)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=5, help="measured step pairs per setting (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    parser.add_argument("--skip-m", action="store_true", help="only the tiny demo preset")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = [("demo@256", "dinov3_demo", 256, 8)]
    if not args.skip_m:
        settings.append(("M@640", "dinov3_m", 640, 2))
    print(f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.iters} interleaved step pairs")
    for label, preset, size, batch in settings:
        phase1, full = measure(preset, size, batch, args.iters)
        print(f"{label} ({preset}, batch {batch}): phase-1 step {phase1 * 1000:.0f} ms, full step {full * 1000:.0f} ms")
        print(f"{label} phase1/full ratio={phase1 / full:.3f}")


if __name__ == "__main__":
    main()
