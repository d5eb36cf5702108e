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
    defect_scale: str = "normal",
    progress: bool = True,
) -> SynthSummary:
    """Write ``out/{train,val,test}/images`` with ``annotations.json`` and ``out/descriptions.yml``.

    ``defect_scale="small"``: several 12-48 px defects per image (with a large ``size``, e.g. 2048:
    the data sliced inference and ``data slice`` are for)."""
    return generate_synthetic_dataset(
        out, train=train, val=val, test=test, size=size, seed=seed, defect_scale=defect_scale, progress=progress
    )
