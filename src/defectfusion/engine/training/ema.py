"""Exponential moving average of the weights that train.

The decay ramps up as in the original DEIMv2 ``ModelEMA``: ``decay * (1 - exp(-updates / warmups))``
so a young model's EMA follows it closely (a fixed 0.9999 leaves the EMA near the random start
for thousands of steps). Only tensors of the groups being trained are averaged; frozen ones
never change, so the EMA copy shares their values.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ...models.groups import parameter_group


class ModelEMA:
    """EMA copy of a model. ``module`` is the averaged model (eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmups: float = 1000.0, updates: int = 0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmups = warmups
        self.updates = updates
        trainable_groups = {parameter_group(n) for n, p in model.named_parameters() if p.requires_grad}
        frozen = {id(p) for p in model.parameters() if not p.requires_grad}
        model_state = model.state_dict(keep_vars=True)
        ema_state = self.module.state_dict(keep_vars=True)
        # Floating tensors of the trained groups, trained parameters and BN statistics alike. A tied
        # tensor appears under several names but is averaged once; the class text embeddings
        # are constants, not weights.
        self.names, seen = [], set()
        for name, value in model_state.items():
            if (
                not value.dtype.is_floating_point
                or parameter_group(name) not in trainable_groups
                or id(value) in frozen
            ):
                continue
            if name.endswith("text_embeddings") or id(value) in seen:
                continue
            seen.add(id(value))
            self.names.append(name)
        self._pairs = [(ema_state[n], model_state[n]) for n in self.names]

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.warmups))

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        """One EMA step towards the live model (the one given at construction)."""
        self.updates += 1
        d = self.current_decay()
        if not self._pairs:
            return
        ema_tensors = [e.data for e, _ in self._pairs]
        live_tensors = [m.data for _, m in self._pairs]
        torch._foreach_mul_(ema_tensors, d)
        torch._foreach_add_(ema_tensors, live_tensors, alpha=1.0 - d)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay, "warmups": self.warmups}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
