"""The trainer learns: a tiny detector's validation mAP@0.5 rises far above its starting value.

Validation here is the training images themselves: a check that the loop, loss, EMA and
evaluation work together (the model can fit what it sees), not a claim about generalisation;
the demo measures that on held-out images.
"""

import json

import pytest

from defectfusion.config import load_config
from defectfusion.data.synthetic import generate_synthetic_dataset
from defectfusion.engine.progressive import run_training
from tests.conftest import write_train_config

pytestmark = pytest.mark.slow


def test_validation_map_rises_well_above_its_value_at_initialisation(tmp_path):
    generate_synthetic_dataset(tmp_path / "data", train=8, val=1, size=128, seed=5)
    train_json = str(tmp_path / "data" / "train" / "annotations.json")
    cfg = write_train_config(
        tmp_path / "cfg.yml", tmp_path / "data", order=["baseline"],
        model={"preset": "dinov3_micro", "image_size": [128, 128]},
        data={"batch_size": 8, "val": {"annotations": train_json}},
        train={"warmup_steps": 10, "eval_every": 40, "ema": {"warmups": 10}},
        phases={"baseline": {"epochs": 120, "lr": 1e-3}},
    )
    summary = run_training(load_config(cfg), tmp_path / "run", progress=False)
    outcome = summary["phases"]["baseline"]
    assert outcome["initial_map50"] < 0.05
    assert outcome["best_map50"] > outcome["initial_map50"] + 0.3, outcome
    records = [json.loads(line) for line in (tmp_path / "run" / "baseline" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 40, 80, 120]
    assert records[-1]["train_loss"] < records[1]["train_loss"]
