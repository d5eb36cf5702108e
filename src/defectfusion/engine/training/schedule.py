"""The optimiser's parameter groups and the learning-rate schedule (linear warm-up, flat, then cosine)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ...config import PhaseConfig
from ...models.groups import parameter_group


def flat_cosine_factor(step: int, total: int, warmup: int, flat_fraction: float, min_factor: float) -> float:
    """Multiplier of the base lr at optimisation step ``step`` (0-based) of ``total``.

    Linear warm-up from ``1 / warmup`` (step 0) to 1 (step ``warmup - 1``); 1 until step
    ``flat_end = max(warmup, int(total * flat_fraction))``; then a half cosine from 1 at ``flat_end``
    to exactly ``min_factor`` at the last step, ``total - 1`` (the config's ``min_lr_factor``, "the
    final lr"). A phase whose flat part covers it (``total <= flat_end``) never decays.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    flat_end = max(warmup, int(total * flat_fraction))
    if step < flat_end or total <= flat_end:
        return 1.0
    span = total - 1 - flat_end  # the last step is flat_end + span; a single decayed step is the last one
    progress = 1.0 if span <= 0 else min(1.0, (step - flat_end) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup: int,
    flat_fraction: float = 0.5,
    min_factor: float = 0.05,
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`flat_cosine_factor` of every group's lr: the optimiser's step ``k`` runs at the factor of
    ``k`` when ``scheduler.step()`` follows each ``optimizer.step()``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: flat_cosine_factor(step, total_steps, warmup, flat_fraction, min_factor)
    )


#: The param group of the fusion heads' scalars (gate, logit scale, logit bias).
FUSION_SCALARS = "fusion/scalars"


def is_fusion_scalar(name: str, param: torch.nn.Parameter) -> bool:
    """A 0-d parameter of a fusion head: its gate, logit scale or logit bias."""
    return param.ndim == 0 and parameter_group(name) == "fusion"


def optimizer_groups(
    model: torch.nn.Module, phase: PhaseConfig, weight_decay: float, scalar_lr_multiplier: float = 1.0
) -> list[dict[str, Any]]:
    """One AdamW group per trainable model group (its own lr), split by weight decay, and one for the
    fusion heads' scalars.

    No weight decay on 1-D tensors (norms, biases) nor on the fusion scalars. The scalars (gate,
    logit scale, logit bias) get their own group, :data:`FUSION_SCALARS`, at the fusion lr times
    ``scalar_lr_multiplier``: Adam moves each parameter by about its lr per step whatever its
    gradient, so at the fusion lr a gate that starts at 0 stays near 0 for a whole short phase.
    It comes last, so ``param_groups[0]`` stays a group at the phase's own lr.
    """
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    scalars: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_fusion_scalar(name, param):
            scalars.append(param)
            continue
        decays = param.ndim > 1 and "norm" not in name
        groups.setdefault((parameter_group(name), decays), []).append(param)
    out = [
        {
            "params": params,
            "lr": phase.lr_for(group),
            "weight_decay": weight_decay if decays else 0.0,
            "name": group if decays else f"{group}/no_decay",
        }
        for (group, decays), params in groups.items()
    ]
    if scalars:
        lr = phase.lr_for("fusion") * scalar_lr_multiplier
        out.append({"params": scalars, "lr": lr, "weight_decay": 0.0, "name": FUSION_SCALARS})
    return out
