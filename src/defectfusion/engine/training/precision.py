"""Mixed precision: which autocast dtype a run uses, from ``train.amp`` and the device.

``auto`` is bf16 on a GPU with native bf16 (compute capability 8.0 or more: Ampere and later; no
grad scaler needed: bf16 has float32's range), fp16 with a grad scaler on older GPUs (V100, T4:
``torch.cuda.is_bf16_supported()`` says yes there too, counting bf16 emulated in float32, which is
slower than fp16), and off on CPU (CPU autocast is slower than float32 for these models). ``bf16``
also runs on CPU, which is how the tests exercise the mixed-precision path without a GPU; fp16's
scaled step is :mod:`.amp_step`'s. Weights, optimizer state, EMA and checkpoints stay float32 in
every mode: autocast only changes the dtype of the operations it covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """The resolved mode: autocast on or off, its dtype, and whether fp16's grad scaler is needed."""

    mode: str  # "off" | "bf16" | "fp16"
    device_type: str

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.mode == "fp16" else torch.bfloat16

    @property
    def needs_scaler(self) -> bool:
        return self.mode == "fp16"

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


#: The first CUDA compute capability with native bf16 (Ampere).
NATIVE_BF16 = (8, 0)


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast runs natively here: a GPU of compute capability 8.0 or more (any ROCm GPU), or the CPU."""
    if device.type == "cuda":
        return bool(torch.version.hip) or tuple(torch.cuda.get_device_capability(device)) >= NATIVE_BF16
    return device.type == "cpu"


def resolve_precision(amp: str, device: torch.device | str) -> Precision:
    """The precision ``train.amp`` means on ``device``; a mode the device cannot run is a ConfigError."""
    device = torch.device(device)
    if amp == "auto":
        if device.type != "cuda":
            return Precision("off", device.type)
        return Precision("bf16" if bf16_supported(device) else "fp16", device.type)
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.amp: fp16 needs a CUDA device (this run uses {device}); use bf16, which also runs on CPU, or off"
        )
    if amp == "bf16" and not bf16_supported(device):
        raise ConfigError(
            f"train.amp: bf16 is not native on {device}{_capability(device)}; use fp16 (with a grad scaler), "
            "auto (which picks it there) or off"
        )
    if amp not in ("off", "bf16", "fp16"):
        raise ConfigError(f"train.amp must be off, bf16, fp16 or auto, got {amp!r}")
    return Precision(amp, device.type)


def _capability(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    major, minor = torch.cuda.get_device_capability(device)
    return f" (compute capability {major}.{minor}; native bf16 needs {NATIVE_BF16[0]}.{NATIVE_BF16[1]} or more)"
