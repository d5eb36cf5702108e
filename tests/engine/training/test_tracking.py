"""MLflow tracking of a run: its config as parameters, each evaluation as metrics, its files as artifacts."""

from __future__ import annotations

import pytest

from defectfusion.config import load_config
from defectfusion.engine.training.progressive import run_training
from tests.helpers import write_train_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_logs_to_mlflow_when_train_mlflow_names_a_store(tmp_path, synth_data):
    mlflow = pytest.importorskip("mlflow")
    import torch

    from defectfusion.config import ModelConfig
    from defectfusion.data.coco import load_coco
    from defectfusion.models.checkpoint import save_detector
    from defectfusion.models.detector import build_detector

    torch.manual_seed(0)
    names = list(load_coco(synth_data / "train" / "annotations.json").class_names)
    save_detector(build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), names), tmp_path / "start")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = write_train_config(
        tmp_path / "cfg.yml",
        synth_data,
        order=["phase1"],
        model={"checkpoint": str(tmp_path / "start")},
        train={"mlflow": uri, "mlflow_experiment": "tiny", "mlflow_tags": {"arm": "text"}},
    )
    summary = run_training(load_config(cfg), tmp_path / "run", progress=False)
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["arm"] == "text" and run.data.params["model.preset"] == "hgnetv2_micro"
    assert run.data.metrics["final/val_map50"] == summary["final"]["map50"]
    history = client.get_metric_history(run.info.run_id, "phase1/val_map50")
    assert len(history) == 2  # epoch 0 and epoch 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml", "phase1"} <= artifacts
    assert not (tmp_path / "mlruns").exists()  # artifacts beside the database, not in the working directory
