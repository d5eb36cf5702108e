"""One optimiser step through a grad scaler, and whether it happened.

Under fp16 autocast a gradient can overflow; ``GradScaler.step`` then skips the optimiser step and
``update`` lowers the scale (the first steps of a run often do, while the scale calibrates). The
step did not happen, so the learning-rate schedule and the EMA must not advance either: the
caller learns it from :func:`scaled_step`'s return value. A disabled scaler (bf16, float32) always
steps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def scaled_step(
    loss: torch.Tensor,
    scaler: torch.amp.GradScaler,
    optimizer: torch.optim.Optimizer,
    params: Iterable[torch.Tensor],
    grad_clip: float | None = None,
) -> bool:
    """Backward through ``scaler``, clip the unscaled gradients of ``params`` to ``grad_clip`` (when
    set), step ``optimizer`` and update the scale. True when the optimiser stepped; False when the
    scaler found an inf/nan gradient and skipped it.

    A skip is read from the scale: ``update`` lowers it exactly when the step was skipped (by
    ``backoff_factor`` < 1) and otherwise keeps or raises it. One device sync per step.
    """
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale
