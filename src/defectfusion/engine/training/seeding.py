"""Random state of a training run: seeded per phase, saved and restored with a phase's checkpoint."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import torch


def seed_phase(seed: int, phase: str) -> int:
    """Seed every RNG from (run seed, phase name): a phase's result does not depend on what ran before it.

    Called before the phase builds anything random (fusion heads, the first batch's noise), so a
    run resumed between two phases trains the next one exactly as the uninterrupted run does.
    """
    digest = hashlib.sha256(f"{seed}:{phase}".encode()).digest()
    phase_seed = int.from_bytes(digest[:8], "little") % 2**63
    random.seed(phase_seed)
    torch.manual_seed(phase_seed)  # also seeds every CUDA device
    return phase_seed


def rng_state() -> dict[str, Any]:
    """The torch, CUDA and Python generators' states (what ``last/`` keeps to resume mid-phase)."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
