"""Saving and loading detectors: a folder with ``config.json`` and ``model.safetensors``.

Our folders and the folders ``Deimv2ForObjectDetection.save_pretrained`` writes share the layout,
so both load with :func:`load_detector`. Nothing is unpickled: weights are safetensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import Deimv2Config

from ..errors import CheckpointError
from ..io import atomic_write_dir
from .detector import DefectDetector

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "defectfusion.detector.v1"


def _shared_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names that point at the same storage (tied weights), in state-dict order."""
    by_storage: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        by_storage.setdefault(key, []).append(name)
    return [names for names in by_storage.values() if len(names) > 1]


def detector_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each tied tensor stored once (under its first name), contiguous, on CPU."""
    state = model.state_dict()
    for names in _shared_groups(state):
        for alias in names[1:]:
            del state[alias]
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_detector(
    model: DefectDetector, path: str | Path, extra: Mapping[str, Callable[[Path], None]] | None = None
) -> Path:
    """Write the model folder atomically (an existing folder is replaced only when complete).

    ``extra`` maps file names to writers called with the file's path inside the new folder, so
    companion files (metrics, trainer state) appear together with the weights or not at all.
    """
    config_text = model.config.to_json_string()
    state = detector_state(model)

    def write(folder: Path) -> None:
        (folder / CONFIG_NAME).write_text(config_text, encoding="utf-8")
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": FORMAT})
        for name, writer in (extra or {}).items():
            writer(folder / name)

    atomic_write_dir(path, write)
    return Path(path)


def read_model_config(folder: Path) -> Deimv2Config:
    """The Deimv2Config of a detector folder, checked as :func:`load_detector` checks it (weights untouched)."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(
            f"{folder} is not a detector folder: {CONFIG_NAME} is missing. Expected a folder written by "
            f"`defectfusion train`/`convert` or by transformers' save_pretrained"
        )
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {config_path}: {exc}") from None
    if data.get("model_type") != "deimv2":
        raise CheckpointError(
            f"{config_path} describes a {data.get('model_type')!r} model; defectfusion loads DEIMv2 detectors "
            f"(model_type 'deimv2'). For a checkpoint of the original DEIMv2 code use `defectfusion convert`"
        )
    try:
        return Deimv2Config.from_dict(data)
    except Exception as exc:
        raise CheckpointError(f"{config_path}: invalid DEIMv2 config: {exc}") from None


def has_fusion_head(folder: str | Path) -> bool:
    """Whether the detector saved in ``folder`` is fused (from its config alone; False when it is no detector)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text(encoding="utf-8")).get("defectfusion") or {}
    except (OSError, json.JSONDecodeError):
        return False
    return bool(meta.get("fusion"))


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights exactly: every model tensor must come from ``state`` (tied copies count once)."""
    own = model.state_dict()
    for names in _shared_groups(own):
        present = [n for n in names if n in state]
        for name in names:
            if name not in state and present:
                state[name] = state[present[0]]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} with another shape (e.g. {'; '.join(mismatched[:2])})")
        raise CheckpointError(f"{source}: weights do not match the model config: {', '.join(parts)}")
    model.load_state_dict(state, strict=True)


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> DefectDetector:
    """Load a detector folder (ours or a transformers ``save_pretrained`` folder) in eval mode."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(f"checkpoint {str(folder)!r} does not exist")
    if folder.is_file():
        if folder.suffix in {".pth", ".pt"}:
            raise CheckpointError(
                f"{folder} is a PyTorch file, not a detector folder. If it comes from the original DEIMv2 code, "
                f"convert it first: defectfusion convert {folder} --config CONFIG.yml --out DIR"
            )
        raise CheckpointError(f"{folder} is a file; a detector checkpoint is a folder with {CONFIG_NAME}")
    config = read_model_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder}: {WEIGHTS_NAME} is missing (sharded or .bin checkpoints are not supported)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: cannot read weights ({exc}); the file is damaged or incomplete") from None
    model = DefectDetector(config)
    load_state_into(model, state, str(weights))
    return model.to(device).eval()
