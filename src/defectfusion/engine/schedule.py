"""Learning-rate schedule: linear warm-up, flat, then cosine (DEIM's flat-cosine)."""

from __future__ import annotations

import math

import torch


def flat_cosine_factor(step: int, total: int, warmup: int, flat_fraction: float, min_factor: float) -> float:
    """Multiplier of the base lr at ``step`` of ``total`` optimisation steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    flat_end = max(warmup, int(total * flat_fraction))
    if step < flat_end or total <= flat_end:
        return 1.0
    progress = min(1.0, (step - flat_end) / max(1, total - flat_end))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int, flat_fraction: float = 0.5,
                    min_factor: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: flat_cosine_factor(step, total_steps, warmup, flat_fraction, min_factor)
    )
