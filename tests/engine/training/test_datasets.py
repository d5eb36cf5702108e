"""A run's datasets: train and validation checked alike, a test split that selected nothing."""

from __future__ import annotations

import json

import pytest

from defectfusion.config import load_config
from defectfusion.engine.training.datasets import load_datasets
from defectfusion.errors import ConfigError, DataError
from tests.helpers import write_train_config


def test_the_splits_load_and_a_test_split_is_optional(tmp_path, synth_data):
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data))
    data = load_datasets(cfg, progress=False)
    assert data.test is None and len(data.train.images) == 24 and len(data.val.images) == 8


def test_a_missing_split_names_the_flag_that_gives_it(tmp_path, synth_data):
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data)).model_copy(deep=True)
    cfg.data.val = None
    with pytest.raises(ConfigError, match=r"data\.val is not set: .*-o data\.val\.annotations=PATH"):
        load_datasets(cfg, progress=False)


def test_a_test_split_holding_training_images_is_refused(tmp_path, synth_data):
    train = str(synth_data / "train" / "annotations.json")
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data, data={"test": {"annotations": train}}))
    with pytest.raises(DataError, match="24 test image file"):
        load_datasets(cfg, progress=False)


def test_splits_with_other_classes_are_refused(tmp_path, synth_data):
    data = json.loads((synth_data / "val" / "annotations.json").read_text())
    data["categories"] = list(reversed(data["categories"]))
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "annotations.json").write_text(json.dumps(data))
    images = str(synth_data / "val" / "images")
    val = {"annotations": str(tmp_path / "val" / "annotations.json"), "images": images}
    cfg = load_config(write_train_config(tmp_path / "cfg.yml", synth_data, data={"val": val}))
    with pytest.raises(DataError, match="train and validation categories differ"):
        load_datasets(cfg, progress=False)
