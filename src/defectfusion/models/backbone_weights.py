"""Pretrained backbone weights for a detector trained from scratch (the seed's option 2).

Accepted, as the original DEIMv2 configs name them in ``weights_path``:

- the original code's ViT-Tiny(+) files (``vitt_distill.pt``, ``vittplus_distill.pt``: tensors of
  its ``_model``), DINOv3's own ``.pth`` (``dinov3_vits16_pretrain_lvd1689m-*.pth``), HGNetV2
  stage-1 files (``PPHGNetV2_B0_stage1.pth``), or a whole original checkpoint (its ``backbone.*``);
- a transformers folder of the backbone (``config.json`` + ``*.safetensors``, e.g. written by
  ``AutoBackbone.save_pretrained`` or a DINOv3 ``DINOv3ViTModel`` folder).

Everything else of the detector keeps its random initialisation. Files are read with
``weights_only=True`` or safetensors; nothing in them is executed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError
from .detector import DefectDetector
from .original.keys import fill_model_only, map_original_state

_MAX_LISTED = 6


def _backbone_prefix(model: DefectDetector) -> str:
    vit = getattr(model.config.backbone_config, "model_type", None) == "dinov3_vit"
    return "model.conv_encoder.backbone." if vit else "model.conv_encoder.model."


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(
                f"backbone folder {path} holds no *.safetensors weights (a transformers model folder)"
            )
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(str(file)))
        return state
    if not path.is_file():
        raise CheckpointError(f"model.backbone_weights: {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise CheckpointError(
            f"{path}: cannot read the backbone weights ({' '.join(str(exc).split())[:160]})"
        ) from None
    for key in ("ema", "model", "state_dict"):  # the original solver's and common wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            inner = obj[key].get("module", obj[key]) if key == "ema" else obj[key]
            if isinstance(inner, dict) and inner:
                obj = inner
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return obj


def _original_names(state: dict[str, torch.Tensor], hgnet: bool) -> dict[str, torch.Tensor] | None:
    """The tensors under the original DEIMv2 model's names (``backbone.*``), or None if not that layout."""
    if any(k.startswith("backbone.") for k in state):
        return {k: v for k, v in state.items() if k.startswith("backbone.")}
    if hgnet:
        return {f"backbone.{k}": v for k, v in state.items()} if any(k.startswith("stem.") for k in state) else None
    if any(k.startswith("_model.") for k in state):  # ViT-Tiny saved with its wrapper
        return {f"backbone.dinov3.{k}": v for k, v in state.items()}
    if not any(k.startswith("blocks.") for k in state):
        return None
    dinov3 = any(k in state for k in ("storage_tokens", "norm.weight")) or any(".ls1." in k for k in state)
    prefix = "backbone.dinov3." if dinov3 else "backbone.dinov3._model."
    return {prefix + k: v for k, v in state.items() if not k.endswith(".bias_mask")}


def _check_rope_periods(model: DefectDetector, original: dict[str, torch.Tensor], path: Path) -> None:
    """The file's RoPE periods (a buffer the model recomputes) must be the ones this ViT computes."""
    periods = next((v for k, v in original.items() if k.endswith("rope_embed.periods")), None)
    if periods is None:
        return
    vit = model.config.backbone_config
    head_dim = vit.hidden_size // vit.num_attention_heads
    expected = vit.rope_theta ** (torch.arange(head_dim // 4, dtype=torch.float64) * 4 / head_dim)
    if periods.shape != expected.shape or not torch.allclose(periods.double(), expected, rtol=1e-5):
        raise CheckpointError(
            f"{path}: its RoPE periods are for another head size than this model's ({head_dim}); the file is for "
            f"another backbone: choose the preset of that backbone (model.preset)"
        )


def _transformers_names(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], prefix: str
) -> dict[str, torch.Tensor] | None:
    """A transformers backbone's own names (optionally under a model prefix) mapped onto ``target``."""
    for strip in ("", "backbone.", "model.", "dinov3.", "hgnetv2."):
        mapped = {}
        for key, value in state.items():
            if not key.startswith(strip):
                continue
            rest = key[len(strip) :]
            for candidate in (prefix + rest, prefix + "model." + rest):  # DINOv3ViTModel's layer.N -> model.layer.N
                if candidate in target:
                    mapped[candidate] = value
                    break
        if mapped and len(mapped) >= 0.9 * len([k for k in state if k.startswith(strip)]):
            return mapped
    return None


def load_backbone_weights(model: DefectDetector, path: str | Path) -> list[str]:
    """Copy pretrained backbone weights into ``model`` in place; returns the names it filled.

    Every tensor of the backbone must come from the file (or be a documented no-op such as the
    ViT mask token); a file for another architecture is one :class:`CheckpointError` naming the
    first tensors whose shapes differ.
    """
    path = Path(path).expanduser()
    state = _read_state(path)
    prefix = _backbone_prefix(model)
    target = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    original = _original_names(state, hgnet=prefix.endswith(".model."))
    if original:
        _check_rope_periods(model, original, path)
        try:
            mapped = map_original_state(original, model.config.encoder_type)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    else:
        mapped = _transformers_names(state, target, prefix)
        if not mapped:
            sample = ", ".join(list(state)[:4])
            raise CheckpointError(
                f"{path}: not backbone weights this model can take (tensors named e.g. {sample}); expected the "
                f"original DEIMv2 backbone files or a transformers backbone folder"
            )
    stray = [k for k in mapped if k not in target]
    wrong = [
        f"{k} {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}"
        for k in mapped
        if k in target and mapped[k].shape != target[k].shape
    ]
    if stray or wrong:
        detail = "; ".join((wrong + stray)[:_MAX_LISTED])
        raise CheckpointError(
            f"{path} does not fit this model's backbone ({model.meta.preset or 'converted model'}): {detail}. Choose "
            f"the preset of that backbone (model.preset)"
        )
    fill_model_only(model, mapped)
    mapped = {k: v for k, v in mapped.items() if k in target}
    missing = [k for k in target if k not in mapped]
    if missing:
        raise CheckpointError(
            f"{path} lacks {len(missing)} tensor(s) of the backbone, e.g. {', '.join(missing[:_MAX_LISTED])}"
        )
    with torch.no_grad():
        for key, value in mapped.items():
            target[key].copy_(value.to(target[key].dtype))
    return sorted(mapped)
