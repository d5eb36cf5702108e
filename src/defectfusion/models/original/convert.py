"""Convert checkpoints written by the original DEIMv2 code into defectfusion detector folders.

The original solver saves ``{'model': state, 'ema': {'module': state, 'updates': n}, ...}``
with ``torch.save``; its YAML config (with ``__include__`` files) describes the architecture.
:func:`convert_original` reads both, decides every architecture value (from the YAML, checked
against the tensor shapes; from the shapes where the YAML is silent; else the original code's
default; else an error naming the key), builds a :class:`DefectDetector` with the original
semantics (:mod:`.semantics`), moves every tensor to its place and writes ``config.json`` +
``model.safetensors``.

Safety: the file is read with ``torch.load(weights_only=True)`` (or safetensors); nothing in it
is executed. Exactness: every tensor of the checkpoint lands in the model or is a buffer that is
recomputed and verified here (anchors, RoPE periods); every tensor of the model comes from the
checkpoint or is a documented no-op (ViT mask/register tokens, unit layer scales). Anything else
is an error that lists the names, and nothing is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ...data.coco import read_categories
from ...errors import CheckpointError, ConfigError, DataError
from ..checkpoint import load_state_into
from ..detector import META_KEY, DefectDetector, DetectorMeta
from .architecture import resolve_architecture
from .config import OriginalConfig, Settings
from .keys import fill_model_only, map_original_state
from .spec import Architecture

WEIGHT_CHOICES = ("ema", "model")
_MAX_LISTED = 8


# ============================================================================ reading the file


@dataclass
class OriginalCheckpoint:
    """The weights chosen from an original DEIMv2 checkpoint file."""

    path: Path
    state: dict[str, torch.Tensor]
    weights: str  # "ema" | "model" | "state_dict"
    available: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes one CheckpointError line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        text = " ".join(str(exc).split())
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused:
            raise CheckpointError(
                f"{path}: the file holds a pickled Python object ({refused.group(1)}) besides tensors; defectfusion "
                f"reads checkpoints with weights_only=True and never runs code from a file. Re-save the weights as "
                f"a plain state dict (or safetensors) and convert that"
            ) from None
        if "central directory" in text or "zip archive" in text or isinstance(exc, EOFError):
            reason = "the file is truncated or damaged"
        elif "invalid load key" in text or "magic number" in text or "UnpicklingError" in type(exc).__name__:
            reason = "it is not a PyTorch checkpoint"
        else:
            reason = text[:160]
        raise CheckpointError(f"{path}: cannot read the checkpoint: {reason}") from None


def read_checkpoint(path: str | Path, weights: str | None = None) -> OriginalCheckpoint:
    """Read an original DEIMv2 checkpoint safely and choose its ``ema`` or ``model`` weights.

    Args:
        path: the ``.pth`` the original solver wrote (a bare state dict or ``.safetensors`` also work).
        weights: ``"ema"``, ``"model"`` or None: EMA when the file has it (as the original
            evaluation uses), else the model weights.
    """
    path = Path(path).expanduser()
    if weights is not None and weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist" + (" (it is a folder)" if path.exists() else "")
        )
    if path.suffix == ".safetensors":
        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(
                f"{path}: cannot read the weights ({exc}); the file is damaged or incomplete"
            ) from None
    else:
        obj = _torch_load(path)

    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a DEIMv2 checkpoint (it holds a {type(obj).__name__}, expected a dict)")
    info: dict[str, Any] = {}
    entries: dict[str, Any] = {}
    if "model" in obj or "ema" in obj:
        ema = obj.get("ema")
        if isinstance(ema, dict) and isinstance(ema.get("module"), dict) and ema["module"]:
            entries["ema"] = ema["module"]
            if isinstance(ema.get("updates"), int):
                info["ema_updates"] = ema["updates"]
        if isinstance(obj.get("model"), dict) and obj["model"]:
            entries["model"] = obj["model"]
        for key in ("last_epoch", "date"):
            if isinstance(obj.get(key), int | str):
                info[key] = obj[key]
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        entries["state_dict"] = obj
    if not entries:
        keys = ", ".join(map(str, list(obj)[:_MAX_LISTED])) or "nothing"
        raise CheckpointError(
            f"{path}: not a DEIMv2 checkpoint: expected the original solver's 'model'/'ema' entries or a state dict "
            f"of tensors, found {keys}"
        )
    available = tuple(entries)
    if weights is None:
        chosen = "ema" if "ema" in entries else next(iter(entries))
    elif weights in entries:
        chosen = weights
    elif "state_dict" in entries and weights == "model":
        chosen = "state_dict"
    else:
        raise CheckpointError(f"{path} has no {weights!r} weights; it holds: {', '.join(available)}")
    state = _clean_state(entries[chosen], path, chosen)
    return OriginalCheckpoint(path, state, chosen, available, info)


def _clean_state(state: dict[str, Any], path: Path, entry: str) -> dict[str, torch.Tensor]:
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: '{entry}' is not a state dict of tensors (e.g. {', '.join(bad[:3])})")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    if not any(k.startswith(("decoder.dec_score_head.", "decoder.enc_score_head.")) for k in state):
        sample = ", ".join(list(state)[:4])
        raise CheckpointError(
            f"{path}: '{entry}' is not a DEIMv2 model: it has no DEIMTransformer score heads "
            f"(decoder.dec_score_head.*); its tensors are named e.g. {sample}"
        )
    return dict(state)


# ============================================================================ class names


def class_names_from_annotations(path: str | Path, num_classes: int | None = None) -> list[str]:
    """Class names from a COCO file, for a model trained with ``remap_mscoco_category: False``.

    The original then uses the category id itself as the label, so channel k is the category with
    id k: ids must be 0..C-1, listed in id order (so that defectfusion's datasets, which number
    classes in list order, agree with the model's channels).
    """
    path = Path(path).expanduser()
    names, ids, _ = read_categories(path)
    if sorted(ids) != list(range(len(ids))):
        raise DataError(
            f"{path}: category ids are {ids}; the original DEIMv2 (remap_mscoco_category: False) uses the category "
            f"id as "
            f"the class channel, so the ids must be 0..{len(ids) - 1}. Give the class names in channel order instead"
        )
    if ids != sorted(ids):
        raise DataError(
            f"{path}: categories are listed in the order of ids {ids}, not 0..{len(ids) - 1}; channel k is the "
            f"category "
            f"with id k, but defectfusion numbers classes in list order. Reorder the categories by id"
        )
    if num_classes is not None and len(ids) != num_classes:
        raise DataError(f"{path}: {len(ids)} categories, but the checkpoint predicts {num_classes} classes")
    return names


def _class_names(
    given: Sequence[str] | None, annotations: str | Path | None, num_classes: int, remap: bool, s: Settings
) -> list[str]:
    if given is not None and annotations is not None:
        raise ConfigError("give class names either from annotations or as a list, not both")
    if annotations is not None:
        if remap:
            raise ConfigError(
                f"{s.config.path}: remap_mscoco_category is True (labels are the 80 COCO classes remapped); "
                f"class names "
                f"cannot come from an annotation file's ids. Give the class names in channel order"
            )
        names = class_names_from_annotations(annotations, num_classes)
        s.note("class names", ", ".join(names), "config", f"categories of {annotations}")
        return names
    if given is not None:
        names = [n.strip() for n in given]
        if len(names) != num_classes:
            raise ConfigError(f"{len(names)} class names given, but the checkpoint predicts {num_classes} classes")
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"class names must be unique and non-empty, got {names}")
        s.note("class names", ", ".join(names), "config", "given")
        return names
    names = [f"class_{i}" for i in range(num_classes)]
    s.note("class names", f"class_0 .. class_{num_classes - 1}", "default", "no annotations or names given")
    return names


# ============================================================================ the conversion


@dataclass
class ConversionResult:
    """A converted model and how every value was decided."""

    model: DefectDetector
    checkpoint: OriginalCheckpoint
    settings: Settings
    class_names: list[str]
    verified: list[str]
    filled: list[str]
    out: Path | None = None

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_from_original(
    checkpoint: OriginalCheckpoint,
    config: OriginalConfig,
    *,
    class_names: Sequence[str] | None = None,
    annotations: str | Path | None = None,
) -> ConversionResult:
    """Build the :class:`DefectDetector` that computes what the original model computes (in memory)."""
    s = Settings(config, str(checkpoint.path))
    arch = resolve_architecture(config, s, checkpoint.state)
    remap = bool(config.data.get("remap_mscoco_category", False))
    names = _class_names(class_names, annotations, arch.num_classes, remap, s)
    meta = _meta(
        arch,
        config,
        {
            "checkpoint": str(checkpoint.path),
            "config": str(config.path),
            "weights": checkpoint.weights,
            **checkpoint.info,
            "remap_mscoco_category": remap,
        },
    )
    if annotations is not None:  # channel k is the category with id k (checked above)
        meta.category_ids = list(range(len(names)))
    hf_config = arch.deimv2_config(s, names)
    setattr(hf_config, META_KEY, meta.to_dict())
    model = DefectDetector(hf_config)
    state = map_original_state(checkpoint.state, hf_config.encoder_type)
    filled = fill_model_only(model, state)
    load_state_into(model, state, f"{checkpoint.path} ({checkpoint.weights} weights) with config {config.path}")
    model.eval()
    return ConversionResult(model, checkpoint, s, names, arch.verified, filled)


def build_from_original_config(
    config: str | Path | OriginalConfig,
    *,
    class_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
) -> tuple[DefectDetector, Settings]:
    """The architecture an original DEIMv2 YAML describes, randomly initialised (no checkpoint).

    Every value comes from the YAML or the original code's defaults; ``class_names`` (default
    ``class_0 ..``, as many as the YAML's ``num_classes``) may set another number of classes.
    ``device="meta"`` builds shapes only (no memory, no initialisation): enough to count parameters.
    """
    original = config if isinstance(config, OriginalConfig) else OriginalConfig.load(config)
    s = Settings(original, None)
    arch = resolve_architecture(original, s)
    if class_names is not None:
        names = [str(n) for n in class_names]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"class names must be unique and non-empty, got {names}")
    else:
        names = [f"class_{i}" for i in range(arch.num_classes)]
    hf_config = arch.deimv2_config(s, names)
    setattr(hf_config, META_KEY, _meta(arch, original, {"config": str(original.path)}).to_dict())
    if device is None:
        return DefectDetector(hf_config), s
    with torch.device(device):
        return DefectDetector(hf_config), s


def _meta(arch: Architecture, config: OriginalConfig, source: dict[str, Any]) -> DetectorMeta:
    num_top = config.section("PostProcessor").get("num_top_queries", 300)
    return DetectorMeta(
        preset=None,
        semantics="original",
        image_size=arch.image_size,
        image_mean=tuple(arch.image_mean),
        image_std=tuple(arch.image_std),
        extra={"num_top_queries": num_top, "converted_from": source},
    )
