"""Experiment tracking with MLflow, beside the run folder (which stays the source of truth).

With ``train.mlflow`` set to a tracking URI (a local ``sqlite:///runs/mlflow.db`` needs no
server), a training run logs its resolved config as params, every evaluation as metrics and its
summary, config and per-phase tables as artifacts; a study is one experiment with a parent run
(:class:`StudyTracker`: the rule, the intervals, the verdict, the manipulation check, the report)
and one tagged, nested run per arm x fraction x seed. A resumed run continues its MLflow run (the
id is kept in the run folder). MLflow is an optional extra (``pip install 'defectfusion[tracking]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...config import Config
from ...errors import ConfigError
from ...structures import Scored

RUN_ID_FILE = "mlflow_run_id.txt"
PARENT_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names


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


def _import_mlflow():
    try:
        import mlflow
    except ImportError:
        raise ConfigError(
            "train.mlflow is set, but mlflow is not installed: pip install 'defectfusion[tracking]' "
            "(or remove train.mlflow)"
        ) from None
    return mlflow


def _start(mlflow, uri: str, experiment: str, folder: Path, name: str, tags: Mapping[str, str]):
    """Start (or continue, by the id saved in ``folder``) a run of ``experiment``; ``(run, is_new)``."""
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment))
    mlflow.set_experiment(experiment)
    saved = folder / RUN_ID_FILE
    run_id = saved.read_text().strip() if saved.is_file() else None
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else name, tags=dict(tags))
    if run_id is None:
        folder.mkdir(parents=True, exist_ok=True)
        saved.write_text(run.info.run_id)
    return run, run_id is None


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
        self.mlflow = mlflow = _import_mlflow()
        experiment = self.cfg.train.mlflow_experiment or self.cfg.name
        run, new = _start(mlflow, uri, experiment, self.folder, self.cfg.name, self.cfg.train.mlflow_tags)
        self.run_id = run.info.run_id
        if new:
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
        values = {}
        for split, entry in (("val", summary.get("final")), ("test", (summary.get("test") or {}).get("final"))):
            scored = Scored.from_dict(entry)
            if scored is not None:
                values.update({f"final/{split}_map50": scored.map50, f"final/{split}_map": scored.map})
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


class StudyTracker:
    """The parent MLflow run of a study: its runs nest under it (their configs carry :data:`PARENT_TAG`).

    ``start`` before the runs (their configs need the id), ``finish`` with the study's summary: per
    fraction, the primary differences and their bounds, each arm's mean, the text share of the text arm,
    the verdict as a tag, and ``summary.json`` and the report as artifacts.
    """

    def __init__(self, uri: str | None, experiment: str, folder: Path, name: str):
        self.uri, self.experiment, self.folder, self.name = uri, experiment, Path(folder), name
        self.run_id: str | None = None

    def start(self) -> str | None:
        if not self.uri:
            return None
        mlflow = _import_mlflow()
        run, _ = _start(mlflow, self.uri, self.experiment, self.folder, self.name, {"study": self.name})
        self.run_id = run.info.run_id
        mlflow.end_run()  # the runs log from their own processes; finish() reopens this one
        return self.run_id

    def finish(self, summary: Mapping[str, Any], report: Path | None = None) -> None:
        saved = self.folder / RUN_ID_FILE
        run_id = self.run_id or (saved.read_text().strip() if saved.is_file() else None)
        if not self.uri or run_id is None:
            return
        mlflow = _import_mlflow()
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=run_id):
            mlflow.set_tag("rule", summary["rule"][:5000])
            for label, entry in summary["fractions"].items():
                mlflow.set_tag(f"{label}/verdict", entry["verdict"]["outcome"])
                values: dict[str, float] = {}
                for iv in entry["primary"]:
                    for key in ("difference", "low", "high"):
                        if iv.get(key) is not None:
                            values[f"{label}/{iv['a']}-{iv['b']}/{key}"] = iv[key]
                for arm, s in entry["arms"].items():
                    if s.get("map50_mean") is not None:
                        values[f"{label}/{arm}/map50"] = s["map50_mean"]
                for arm, usage in (entry.get("manipulation") or {}).get("per_arm", {}).items():
                    if usage.get("share") is not None:
                        values[f"{label}/{arm}/text_share"] = usage["share"]
                mlflow.log_metrics(values)
            mlflow.log_artifact(str(self.folder / "summary.json"))
            if report is not None and report.is_file():
                mlflow.log_artifact(str(report))
