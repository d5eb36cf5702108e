"""What-if descriptions: a fused model re-evaluated with other class texts, without retraining.

The model's text embeddings are swapped for those of each description file (embedded with the
encoder the model was trained with), the model is evaluated, and the checkpoint's own embeddings
are restored exactly afterwards.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.coco import CocoIndex
from ..data.descriptions import load_descriptions
from ..engine.evaluation.validation import evaluate_on_index
from ..engine.prediction.predictor import Predictor
from ..engine.training.phase_records import find_run_folder
from ..errors import ConfigError
from ..models.text import build_text_encoder, encode_descriptions
from ..structures import Metrics


@dataclass
class WhatIf:
    """The fused model evaluated with the text embeddings of one description file."""

    label: str
    descriptions: str
    encoder: str
    metrics: Metrics


def text_encoder_spec(model, encoder: str | None = None, checkpoint: str | os.PathLike | None = None) -> str:
    """The text encoder spec for what-if descriptions: ``encoder``, else the one the model was trained with.

    The model's ``meta.fusion.encoder_spec`` (saved at training time), else the run folder's
    ``config.yaml``, else the spec behind the stored encoder identity for hub models.
    """
    if encoder:
        return encoder
    fusion = model.meta.fusion
    if fusion.encoder_spec:
        return fusion.encoder_spec
    run = find_run_folder(checkpoint)
    if run is not None:
        import yaml

        try:
            saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
            spec = (saved.get("fusion") or {}).get("encoder")
        except (OSError, yaml.YAMLError, AttributeError):
            spec = None
        if isinstance(spec, str) and spec:
            return spec
    identity = fusion.encoder or ""
    kind, _, rest = identity.partition(":")
    if kind in ("clip", "sentence") and rest.startswith("hub:"):
        return f"{kind}:{rest[len('hub:') :]}"
    raise ConfigError(
        f"the model was trained with the text encoder {identity or '(unknown)'!r}, which does not say how to load "
        f"it again; give the encoder spec (the fusion.encoder of the training config, e.g. "
        f"clip:openai/clip-vit-base-patch32)"
    )


def _what_if_label(name: str, used: set[str]) -> str:
    path = Path(name)
    base = path.stem if path.suffix in {".yml", ".yaml"} else str(name)
    label, n = base, 2
    while label in used:
        label, n = f"{base} ({n})", n + 1
    used.add(label)
    return label


def _note(notes: list[str], message: str) -> None:
    """A caveat of this evaluation: a one-line warning now, and a line in the report."""
    notes.append(message)
    warnings.warn(message, stacklevel=4)


def _warn_if_text_drifted(model, checkpoint: str | os.PathLike, notes: list[str]) -> None:
    """What-if swaps in unit-norm embeddings, identical in every head; say so if the checkpoint's are not."""
    heads = list(model.fusion_heads())
    norms = torch.cat([h.text_embeddings.norm(dim=-1) for h in heads])
    first = heads[0].text_embeddings
    if (norms - 1).abs().max() > 1e-3 or any(not torch.allclose(h.text_embeddings, first, atol=1e-4) for h in heads):
        _note(
            notes,
            f"{checkpoint}: the class text embeddings stored in the fusion heads are not the unit vectors they were "
            f"built with (norms {norms.min():.3f}..{norms.max():.3f}, or different per head): they changed after "
            f"building (e.g. averaged as if they were weights); what-if rows use clean embeddings, so even the "
            f"training descriptions will not reproduce the model's own numbers",
        )


def evaluate_with_descriptions(
    model,
    predictor: Predictor,
    index: CocoIndex,
    descriptions: Sequence[str],
    encoder: str | None,
    checkpoint: str | os.PathLike,
    cache_dir: str | os.PathLike | None,
    progress: bool | None,
    notes: list[str],
    **eval_kw: Any,
) -> list[WhatIf]:
    """The fused model evaluated once per description file, its own text embeddings restored after."""
    if model is None:
        raise ConfigError("what-if descriptions need the PyTorch detector folder, not an exported ONNX model")
    if not model.is_fused:
        raise ConfigError(
            f"{checkpoint} has no text-fusion head, so its predictions do not depend on descriptions; "
            f"give a fused checkpoint (e.g. RUN/phase1/best or RUN/final of a fusion run) to evaluate other "
            f"descriptions"
        )
    fusion = model.meta.fusion
    if fusion.text == "random":
        raise ConfigError(
            f"{checkpoint} is the random-text control (fusion.text: random): its head never saw text, so swapping "
            f"descriptions measures nothing; use a model trained with descriptions"
        )
    spec = text_encoder_spec(model, encoder, checkpoint)
    text_encoder = build_text_encoder(spec)
    _warn_if_text_drifted(model, checkpoint, notes)
    originals = [(head, head.text_embeddings.detach().clone()) for head in model.fusion_heads()]
    results, used = [], set()
    try:
        for item in descriptions:
            desc = load_descriptions(item).ordered_like(model.class_names)
            embeddings = encode_descriptions(desc, spec, cache_dir, encoder=text_encoder)
            dim = int(embeddings.class_embeddings.shape[1])
            if dim != fusion.text_dim:
                raise ConfigError(
                    f"{desc.source or item}: the text encoder {spec} gives {dim}-dimensional embeddings, but the "
                    f"model's fusion head was trained on {fusion.text_dim}-dimensional ones; use the encoder the "
                    f"model was trained with ({fusion.encoder_spec or 'the fusion.encoder of its training config'})"
                )
            if not results and fusion.encoder and embeddings.encoder != fusion.encoder:
                _note(
                    notes,
                    f"what-if texts are embedded with {spec} ({embeddings.encoder}) but the model was trained with "
                    f"{fusion.encoder}; its fusion head was fitted to that encoder's text space",
                )
            model.set_text_embeddings(embeddings.class_embeddings)
            label = _what_if_label(str(item), used)
            metrics, _ = evaluate_on_index(predictor, index, progress=progress, desc=f"what-if {label}", **eval_kw)
            results.append(WhatIf(label, desc.source or str(item), spec, metrics))
    finally:
        with torch.no_grad():  # exactly what the checkpoint held, head by head
            for head, saved in originals:
                head.text_embeddings.copy_(saved)
    return results
