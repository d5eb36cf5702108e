"""The trainer learns: a tiny detector's validation mAP@0.5 rises far above its starting value.

A deliberately easy set (bright squares and dark discs on a noisy grey surface) so that a few
epochs suffice on a CPU; validation is the training images themselves. This checks that the
loop, loss, EMA and evaluation work together (the model fits what it sees), not generalisation:
the demo measures that on held-out images.
"""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from defectfusion.config import load_config
from defectfusion.engine.training.progressive import run_training
from tests.helpers import write_train_config

pytestmark = pytest.mark.slow
SIZE = 128


def _easy_coco(root, count: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        grey = rng.uniform(0.35, 0.6)
        pixels = np.clip(grey + rng.normal(0, 0.04, (SIZE, SIZE, 1)), 0, 1).repeat(3, axis=2)
        img = Image.fromarray((pixels * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        cells = [int(c) for c in rng.permutation(4)[: rng.integers(1, 4)]]  # 1-3 objects, one per quadrant
        for cell in cells:
            side = int(rng.integers(24, 44))
            x = (cell % 2) * SIZE // 2 + int(rng.integers(2, SIZE // 2 - side - 2))
            y = (cell // 2) * SIZE // 2 + int(rng.integers(2, SIZE // 2 - side - 2))
            label = int(rng.integers(2))
            shape = draw.rectangle if label == 0 else draw.ellipse
            shape([x, y, x + side - 1, y + side - 1], fill=(235, 235, 235) if label == 0 else (25, 25, 25))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label,
                    "bbox": [x, y, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
            )
        img.save(root / "images" / f"{i:03d}.png")
        images.append({"id": i + 1, "file_name": f"{i:03d}.png", "width": SIZE, "height": SIZE})
    categories = [{"id": 0, "name": "square"}, {"id": 1, "name": "disc"}]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_validation_map_rises_well_above_its_value_at_initialisation(tmp_path):
    ann = _easy_coco(tmp_path / "data" / "train")
    cfg = write_train_config(
        tmp_path / "cfg.yml",
        tmp_path / "data",
        order=["baseline"],
        model={"preset": "dinov3_micro", "image_size": [SIZE, SIZE]},
        data={"batch_size": 8, "train": {"annotations": str(ann)}, "val": {"annotations": str(ann)}},
        # a short run: an EMA that forgets within tens of steps (the default decay 0.9999 barely moves)
        train={"warmup_steps": 10, "eval_every": 30, "ema": {"decay": 0.95, "warmups": 20}},
        phases={"baseline": {"epochs": 60, "lr": 1e-3}},
    )
    summary = run_training(load_config(cfg), tmp_path / "run", progress=False)
    outcome = summary["phases"]["baseline"]
    assert outcome["initial_map50"] < 0.05
    assert outcome["best_map50"] > outcome["initial_map50"] + 0.3, outcome
    records = [json.loads(line) for line in (tmp_path / "run" / "baseline" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 30, 60]
    assert records[-1]["train_loss"] < records[1]["train_loss"]
