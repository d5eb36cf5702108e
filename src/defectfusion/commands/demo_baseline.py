"""The demo's baseline, shipped inside the package: the phase-1 model the demo's study starts from.

A user's phase 2 starts from a trained phase-1 checkpoint; so does the demo. ``demo_baseline/`` holds
a tiny DEIMv2 trained by the packaged ``scratch_cpu`` recipe on ``defectfusion synth`` images (the
demo's own data: the same generator, sizes and seed), stored in float16 (half the bytes; the loader
casts back to float32), with ``card.json`` (and its readable twin ``MODEL_CARD.md``): the commands
that made it, the data, the package version, and its mAP on the validation and test images measured
on the stored float16 weights. A test regenerates the validation images and checks that mAP, so a
change to the generator or the model code that breaks the shipped model fails there.
"""

from __future__ import annotations

import importlib.resources
import json
import shlex
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..io import atomic_write_text, read_json
from ..models.checkpoint import load_detector, save_detector
from ..structures import Scored
from ..version import __version__
from .evaluate import evaluate_checkpoint

RESOURCE = "demo_baseline"
CARD = "card.json"
CARD_MD = "MODEL_CARD.md"
# The images it was trained and measured on: `defectfusion synth` with these arguments.
DATA = {"train": 320, "val": 80, "test": 160, "size": 256, "seed": 0}


def shipped_baseline() -> Path:
    """The packaged baseline's folder (a detector folder, loadable by :func:`load_detector`)."""
    folder = Path(str(importlib.resources.files("defectfusion").joinpath(RESOURCE)))
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(
            f"the demo's shipped baseline is missing from {folder}: reinstall defectfusion, or train one with "
            "`defectfusion demo --train-baseline`"
        )
    return folder


def read_card(folder: Path | None = None) -> dict[str, Any]:
    """The baseline's ``card.json``: ``commands``, ``data``, ``version``, ``weights``, ``val`` / ``test`` metrics."""
    return read_json((folder or shipped_baseline()) / CARD, "the demo baseline's model card")


def training_commands(data: str = "demo-data", out: str = "demo-baseline", processes: int = 2) -> list[list[str]]:
    """The commands that make the baseline from nothing (what ``demo --train-baseline`` runs)."""
    synth = ["defectfusion", "synth", data, *(f"--{k}={v}" for k, v in DATA.items())]
    train = [
        *(["torchrun", "--standalone", f"--nproc_per_node={processes}", "-m"] if processes > 1 else []),
        "defectfusion",
        "train",
        "scratch_cpu",
        "--out",
        out,
        *(arg for o in baseline_overrides(Path(data), processes) for arg in ("-o", o)),
    ]
    return [synth, train]


def baseline_overrides(data: Path, processes: int, batch_size: int = 8) -> list[str]:
    """``scratch_cpu`` overrides of the demo baseline: the data, and the batch split over ``processes``."""
    return [
        f"data.train.annotations={data / 'train' / 'annotations.json'}",
        f"data.val.annotations={data / 'val' / 'annotations.json'}",
        "name=demo-baseline",
        *([f"data.batch_size={max(1, batch_size // processes)}", "train.threads=1"] if processes > 1 else []),
    ]


def _measure(folder: Path, data: Path) -> dict[str, dict[str, Any]]:
    measured = {}
    for split in ("val", "test"):
        metrics = evaluate_checkpoint(folder, data / split / "annotations.json", report=False, progress=False).metrics
        measured[split] = {"map50": metrics.map50, "map": metrics.map, "images": metrics.num_images}
    return measured


def pack_baseline(best_dir: Path, data: Path, dest: Path, commands: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Store ``best_dir``'s model in float16 at ``dest`` with its card, measured on ``data``'s val and test images."""
    model = load_detector(best_dir).half()
    save_detector(model, dest)
    card = {
        "name": "defectfusion demo baseline",
        "version": __version__,
        "made": datetime.now(timezone.utc).date().isoformat(),
        "recipe": "scratch_cpu",
        "data": DATA,
        "commands": [shlex.join(c) for c in commands],
        "weights": "float16 (cast to float32 when loaded)",
        **_measure(dest, data),  # the stored weights, not the float32 ones they came from
    }
    atomic_write_text(dest / CARD, json.dumps(card, indent=2) + "\n")
    atomic_write_text(dest / CARD_MD, card_markdown(card))
    return card


def _maps(measured: dict[str, Any]) -> str:
    scored = Scored.from_dict(measured)
    return f"mAP@0.5 {scored.map50:.4f}, mAP@0.5:0.95 {scored.map:.4f}"


def card_markdown(card: dict[str, Any]) -> str:
    commands = "\n".join(card["commands"])
    val, test = card["val"], card["test"]
    return f"""# {card["name"]}

A tiny DEIMv2 (DINOv3-ViT 96-d / 4 blocks + STA, ~1.4 M parameters, 256 px) trained from scratch on
synthetic six-class defect images: the phase-1 model `defectfusion demo` starts its study from.
It shows the machinery, not an industrial detector: train your own on your images.

- package version: {card["version"]} ({card["made"]})
- recipe: the packaged `{card["recipe"]}` config
- data: `defectfusion synth` with {", ".join(f"{k} {v}" for k, v in card["data"].items())}
- weights: {card["weights"]}
- validation ({val["images"]} images, which selected the checkpoint): {_maps(val)}
- test ({test["images"]} images, which selected nothing): {_maps(test)}

Measured on the stored float16 weights. Made by:

```bash
{commands}
```

and packed (float16, measured, this card) by `python tools/pack_demo_baseline.py RUN/baseline/best DATA`.
"""
