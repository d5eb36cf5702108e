"""A phase's ``last`` state on disk: what a resumed phase needs to go on exactly where it stopped.

``last/`` holds the evaluation model (``model.safetensors``, the EMA's weights when there is an EMA),
the raw trained weights (:data:`RAW_WEIGHTS`), the optimizer, schedule, grad-scaler, EMA and RNG
states (:data:`STATE_FILE`, loaded with ``weights_only``) and ``trainer.json``: epochs completed,
optimisation steps, the best and first evaluations, and, for a phase stopped mid-epoch, the
batches of the next epoch already trained (``epoch_batches``) with the process count they were
drawn for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ...errors import CheckpointError, DataError
from ...io import read_json
from ...models.checkpoint import detector_state, load_state_into, save_detector

STATE_FILE = "trainer_state.pt"
RAW_WEIGHTS = "raw.safetensors"


def save_phase_state(
    folder: Path, model: torch.nn.Module, eval_model: torch.nn.Module, state: dict[str, Any], summary: dict[str, Any]
) -> None:
    """Write ``folder/last`` atomically: ``state`` (tensors: optimizer, scheduler, ...) and ``summary`` (json)."""
    raw = detector_state(model)
    save_detector(
        eval_model,
        folder / "last",
        extra={
            RAW_WEIGHTS: lambda p: save_file(raw, str(p)),
            STATE_FILE: lambda p: torch.save(state, p),
            "trainer.json": lambda p: p.write_text(json.dumps(summary, indent=2), encoding="utf-8"),
        },
    )


def load_phase_state(
    folder: Path, model: torch.nn.Module, ema_model: torch.nn.Module | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``folder/last`` into ``model`` (and the EMA's model); return ``(state, summary)``."""
    last = folder / "last"
    try:
        load_state_into(model, load_file(str(last / RAW_WEIGHTS)), str(last / RAW_WEIGHTS))
        if ema_model is not None:
            load_state_into(ema_model, load_file(str(last / "model.safetensors")), str(last))
        state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=True)
        summary = read_json(last / "trainer.json", "trainer state")
    except (OSError, RuntimeError, ValueError, DataError) as exc:
        raise CheckpointError(f"cannot resume from {last}: {exc}") from None
    return state, summary


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], folder: Path) -> None:
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as exc:  # another set of parameter groups than this version builds
        raise CheckpointError(
            f"cannot resume from {folder / 'last'}: its optimizer state does not fit this phase's parameter groups "
            f"({exc}); it was saved by another version of defectfusion or another config. Finish the phase "
            f"with that version, or restart the phase: delete {folder} and train again"
        ) from None
