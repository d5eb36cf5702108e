"""The model a run starts from, and which kind of start it is: no path has to be read to know."""

from __future__ import annotations

import pytest

from defectfusion.config import load_config
from defectfusion.engine.training.start_model import CHECKPOINT, PREVIOUS_PHASE, RANDOM, RANDOM_START, start_model
from defectfusion.errors import CheckpointError, ConfigError
from defectfusion.models.checkpoint import save_detector
from defectfusion.models.detector import build_detector
from tests.helpers import write_train_config

NAMES = ["a", "b"]


def _cfg(tmp_path, synth_data, **model):
    path = write_train_config(tmp_path / "cfg.yml", synth_data, model={"preset": "hgnetv2_micro", **model})
    return load_config(path)


def test_each_kind_of_start(tmp_path, synth_data):
    cfg = _cfg(tmp_path, synth_data)
    random = start_model(cfg, tmp_path / "run", "baseline", NAMES)
    assert (random.kind, random.source) == (RANDOM, RANDOM_START) and random.model.class_names == NAMES
    with pytest.raises(ConfigError, match="starts from a trained model"):
        start_model(cfg, tmp_path / "run", "phase1", NAMES)  # a fused phase needs a trained detector

    save_detector(random.model, tmp_path / "ckpt")
    with_checkpoint = _cfg(tmp_path, synth_data, checkpoint=str(tmp_path / "ckpt"))
    start = start_model(with_checkpoint, tmp_path / "run", "phase1", NAMES)
    assert (start.kind, start.source) == (CHECKPOINT, str(tmp_path / "ckpt"))

    save_detector(random.model, tmp_path / "run" / "baseline" / "best")  # this run's own previous phase
    start = start_model(with_checkpoint, tmp_path / "run", "phase1", NAMES)
    assert (start.kind, start.source) == (PREVIOUS_PHASE, str(tmp_path / "run" / "baseline" / "best"))


def test_a_checkpoint_of_other_classes_is_refused(tmp_path, synth_data):
    cfg = _cfg(tmp_path, synth_data)
    save_detector(build_detector(cfg.model, ["x", "y"]), tmp_path / "other")
    with pytest.raises(CheckpointError, match="trained for classes"):
        start_model(_cfg(tmp_path, synth_data, checkpoint=str(tmp_path / "other")), tmp_path / "run", "phase1", NAMES)
