"""Experiment tracking with MLflow, beside the run folder (which stays the source of truth).

With ``train.mlflow`` set to a tracking URI (a local ``sqlite:///runs/mlflow.db`` needs no
server), a training run logs its resolved config as params, every evaluation as metrics and its
summary, config and per-phase tables as artifacts; a study is one experiment with one tagged run
per arm x fraction x seed. A resumed run continues its MLflow run (the id is kept in the run
folder). MLflow is an optional extra (``pip install 'defectfusion[tracking]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError

RUN_ID_FILE = "mlflow_run_id.txt"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a local sqlite store go beside the database (not into the working directory)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).expanduser().resolve().parent / "mlflow-artifacts" / experiment).as_uri()
    return None


class Tracker:
    """One MLflow run of a training run; every method is a no-op when tracking is off."""

    def __init__(self, cfg: Config, folder: Path):
        self.cfg, self.folder = cfg, Path(folder)
        self.mlflow = None
        self.run_id: str | None = None

    def start(self) -> None:
        uri = self.cfg.train.mlflow
        if not uri:
            return
        try:
            import mlflow
        except ImportError:
            raise ConfigError(
                "train.mlflow is set, but mlflow is not installed: pip install 'defectfusion[tracking]' "
                "(or remove train.mlflow)"
            ) from None
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        experiment = self.cfg.train.mlflow_experiment or self.cfg.name
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment))
        mlflow.set_experiment(experiment)
        saved = self.folder / RUN_ID_FILE
        run_id = saved.read_text().strip() if saved.is_file() else None
        run = mlflow.start_run(
            run_id=run_id, run_name=None if run_id else self.cfg.name, tags=dict(self.cfg.train.mlflow_tags)
        )
        self.run_id = run.info.run_id
        if run_id is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            saved.write_text(self.run_id)
            mlflow.log_params(_flatten(self.cfg.model_dump(mode="json")))

    def evaluation(self, record: Mapping[str, Any]) -> None:
        if self.mlflow is None:
            return
        phase, step = record["phase"], int(record.get("step") or 0)
        values = {f"{phase}/val_{k}": record[k] for k in ("map50", "map", "train_loss") if record.get(k) is not None}
        if values:
            self.mlflow.log_metrics(values, step=step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        if self.mlflow is None:
            return
        final = summary.get("final") or {}
        values = {"final/val_map50": final.get("map50"), "final/val_map": final.get("map")}
        test = (summary.get("test") or {}).get("final") or {}
        values.update({"final/test_map50": test.get("map50"), "final/test_map": test.get("map")})
        self.mlflow.log_metrics({k: v for k, v in values.items() if v is not None})
        for name in ("summary.json", "config.yaml"):
            if (self.folder / name).is_file():
                self.mlflow.log_artifact(str(self.folder / name))
        for table in sorted(self.folder.glob("*/results.csv")):
            self.mlflow.log_artifact(str(table), artifact_path=table.parent.name)
        self.mlflow.end_run()
        self.mlflow = None

    def failed(self) -> None:
        """End the MLflow run as failed (a resumed run continues it)."""
        if self.mlflow is not None:
            self.mlflow.end_run(status="FAILED")
            self.mlflow = None
