"""The baseline shipped for the demo: small, float16, and as good as its card says on regenerated images."""

from __future__ import annotations

import shlex

import pytest
from safetensors import safe_open

from defectfusion.cli import build_parser
from defectfusion.commands.demo import FULL
from defectfusion.commands.demo_baseline import DATA, read_card, shipped_baseline, training_commands
from defectfusion.commands.evaluate import evaluate_checkpoint
from defectfusion.config import load_config
from defectfusion.data.synthetic import generate_synthetic_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_shipped_baseline_is_small_float16_and_carries_its_card():
    folder = shipped_baseline()
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 5 * 2**20
    with safe_open(str(weights), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    card = read_card()
    assert card["data"] == DATA and card["recipe"] == "scratch_cpu" and card["commands"]
    assert (folder / "MODEL_CARD.md").read_text().count(f"{card['val']['map50']:.4f}") == 1
    # the demo generates the very images the card names
    assert (FULL.train_images, FULL.val_images, FULL.test_images, FULL.image_size) == (
        DATA["train"], DATA["val"], DATA["test"], DATA["size"]
    )  # fmt: skip


def test_the_card_commands_are_ones_the_cli_takes():
    synth, train = training_commands(data="d", out="o")
    args = build_parser().parse_args(synth[1:])
    assert (args.train, args.val, args.test, args.size, args.seed) == tuple(
        DATA[k] for k in ("train", "val", "test", "size", "seed")
    )
    argv = train[train.index("defectfusion") + 1 :]
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.override)
    assert cfg.data.batch_size * 2 == load_config("scratch_cpu").data.batch_size  # split over the 2 processes
    assert str(cfg.data.val.annotations).endswith("d/val/annotations.json")
    # the card names what the code would run now: a changed recipe needs a newly packed baseline
    assert read_card()["commands"] == [shlex.join(c) for c in training_commands()]


def test_the_shipped_baseline_scores_its_recorded_map_on_regenerated_validation_images(tmp_path):
    generate_synthetic_dataset(tmp_path, train=0, val=DATA["val"], size=DATA["size"], seed=DATA["seed"])
    card = read_card()
    metrics = evaluate_checkpoint(
        shipped_baseline(), tmp_path / "val" / "annotations.json", report=False, progress=False
    ).metrics
    assert metrics.num_images == card["val"]["images"]
    assert metrics.map50 == pytest.approx(card["val"]["map50"], abs=1e-4)
    assert metrics.map == pytest.approx(card["val"]["map"], abs=1e-4)
