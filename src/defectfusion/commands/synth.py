"""``defectfusion synth``: the synthetic six-class dataset (train / val COCO splits + descriptions)."""

from __future__ import annotations

import os

from ..data.synthetic import SynthSummary, generate_synthetic_dataset


def synth(
    out: str | os.PathLike,
    *,
    train: int = 400,
    val: int = 80,
    test: int = 0,
    size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> SynthSummary:
    """Write ``out/{train,val,test}/images`` with ``annotations.json`` and ``out/descriptions.yml``."""
    return generate_synthetic_dataset(out, train=train, val=val, test=test, size=size, seed=seed, progress=progress)
