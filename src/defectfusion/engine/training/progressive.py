"""A training run: the baseline, then the progressive phases with their gates, and the final choice.

Run folder::

    <run>/config.yaml        the resolved config, as run
    <run>/start/metrics.json the starting checkpoint evaluated on validation (the baseline)
    <run>/<phase>/...        one folder per phase (see engine.training.trainer)
    <run>/summary.json       baseline and per-phase metrics, gate decisions, final choice
    <run>/final/             the chosen model (never worse than the baseline on validation)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from ...config import Config, dump_config, validate_config
from ...config.compare import SPEED_KEYS, config_differences, describe_differences
from ...data.descriptions import load_descriptions
from ...errors import ConfigError
from ...io import atomic_write_json, atomic_write_text, read_json
from ...models.checkpoint import load_detector
from ...models.detector import DefectDetector, add_fusion
from ...models.inference import InputSpec
from ...models.text import TextEmbeddings, encode_descriptions
from ...structures import Metrics, Scored
from ..evaluation.evaluator import write_metrics
from ..evaluation.validation import evaluate_on_index, run_validation
from ..explain.text_usage import TextUsage, TextUsageProbe
from ..prediction.predictor import Predictor, detections_to_coco
from .datasets import RunData, load_datasets
from .distributed import DistInfo, barrier, broadcast_object, init_distributed
from .final_choice import choose_final
from .final_choice import fmt_metric as _fmt
from .gates import GateDecision, override_gate, phase_gate
from .phase_records import PhaseData, PhaseOutcome, build_phase_data
from .precision import resolve_precision
from .run_folder import Continuation, decide_for_run
from .seeding import seed_phase
from .start_model import CHECKPOINT, PREVIOUS_PHASE, previous_phase, start_model
from .tracking import Tracker
from .trainer import PhaseTrainer
from .trunk_cache import check_cache_setting


def select_phases(cfg: Config, phase: str) -> list[str]:
    """``all`` -> ``cfg.order``; ``1`` -> ``phase1``; a phase name -> itself."""
    if phase == "all":
        if not cfg.order:
            raise ConfigError("the config has no 'order' of phases; name the phase to run, or add 'order: [...]' to it")
        return list(cfg.order)
    for candidate in (phase, f"phase{phase}"):
        if candidate in cfg.phases:
            return [candidate]
    raise ConfigError(f"no phase {phase!r} in the config; defined phases: {', '.join(cfg.phases) or 'none'} (or 'all')")


def check_phases(cfg: Config, names: Sequence[str]) -> None:
    """A ConfigError when a phase to run needs what the config switches off."""
    for name in names:
        if cfg.phases[name].fusion and not cfg.fusion.enabled:
            raise ConfigError(f"phase {name!r} trains the fusion head but fusion.enabled is false")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _metric_summary(metrics: Metrics, source: str) -> dict[str, Any]:
    """A summary.json entry (``start``, ``baseline``, ``test``'s): the headline numbers of an evaluation."""
    return {
        "source": source,
        "map50": metrics.map50,
        "map": metrics.map,
        "per_class_ap50": {name: v.ap50 for name, v in metrics.per_class.items()},
    }


class TrainingRun:
    """One ``defectfusion train`` invocation: phases in order, gates between them."""

    def __init__(
        self,
        cfg: Config,
        out: Path,
        phase: str = "all",
        resume: bool = False,
        progress: bool = True,
        go_past=(),
        continuation: Continuation | None = None,
    ):
        self.cfg, self.out, self.resume, self.progress = cfg, Path(out), resume, progress
        self.phase, self.continuation = phase, continuation
        self.go_past = set(go_past)  # gates the user decided to go past (the decision is recorded)
        self.names = select_phases(cfg, phase)
        check_phases(cfg, self.names)
        self.info: DistInfo = init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup

    def _prepare_folder(self) -> None:
        config_path = self.out / "config.yaml"
        # decided by the command (before its input checks), else here; every process decides alike (the
        # main process's config write does not change what "started" means)
        decision = self.continuation or decide_for_run(self.cfg, self.out, self.resume, self.phase, self.names[0])
        self.resume = decision.resume
        if self.info.is_main:
            if decision.replaces:  # its inputs failed before anything trained: the corrected command takes it
                print(f"{self.out}: replacing a run that never started (no phase trained, nothing evaluated)")
            if decision.resume and config_path.is_file():
                saved = validate_config(yaml.safe_load(config_path.read_text(encoding="utf-8")), str(config_path))
                differences = config_differences(saved, self.cfg)
                if differences:
                    raise ConfigError(
                        f"{config_path} holds the config the run started with, and the config given differs in "
                        f"{describe_differences(differences)}. Resume with the saved config: `defectfusion train "
                        f"--resume --out {self.out}`; or train the new config into another --out. (A resume may "
                        f"change only {', '.join(SPEED_KEYS)}.)"
                    )
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(config_path, dump_config(self.cfg))
        # Every process keeps a summary; only the main process's is complete and written.
        self.summary = {
            "name": self.cfg.name,
            "started": _now(),
            "phases_requested": self.names,
            "start": None,
            "baseline": None,
            "phases": {},
            "gates": [],
            "final": None,
        }
        summary_path = self.out / "summary.json"
        if self.info.is_main and self.resume and summary_path.is_file():
            self.summary = read_json(summary_path, "run summary")
        barrier(self.info)

    def _write_summary(self) -> None:
        if self.info.is_main:
            self.summary["updated"] = _now()
            atomic_write_json(self.out / "summary.json", self.summary)

    def _text(self, class_names: list[str]) -> tuple[TextEmbeddings, str] | None:
        if not any(self.cfg.phases[n].fusion for n in self.names):
            return None
        descriptions = load_descriptions(self.cfg.fusion.descriptions).ordered_like(class_names)
        # The main process fills the cache, the others read it.
        embeddings = None
        if self.info.is_main:
            embeddings = encode_descriptions(descriptions, self.cfg.fusion.encoder, self.cfg.fusion.cache_dir)
        barrier(self.info)
        if not self.info.is_main:
            embeddings = encode_descriptions(descriptions, self.cfg.fusion.encoder, self.cfg.fusion.cache_dir)
        return embeddings, descriptions.source or self.cfg.fusion.descriptions

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.seed)
        self._prepare_folder()
        self.tracker = Tracker(cfg, self.out)
        if self.info.is_main:
            self.tracker.start()
        try:
            return self._run()
        except BaseException:
            self.tracker.failed()
            raise

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        check_cache_setting(cfg, self.names)
        datasets = load_datasets(cfg, verify=self.info.is_main, progress=self.progress)
        class_names = list(datasets.train.class_names)
        start = start_model(cfg, self.out, self.names[0], class_names)
        model, source = start.model, start.source
        model.set_category_ids(datasets.train.label_to_category_id)
        text = self._text(class_names)
        data = build_phase_data(cfg, datasets.train, datasets.val, InputSpec.of(model.meta))

        # A run that starts from a trained model scores it first: it is the baseline. A run from
        # random initialisation gets its baseline from its first phase without fusion.
        continued = start.kind == PREVIOUS_PHASE  # this run's own previous phase
        trained_start = start.kind == CHECKPOINT
        if continued:
            self._pass_gate_before(self.names[0])
        else:
            self.summary["start_model"] = source
        if trained_start and self.summary.get("start") is None and self.info.is_main:
            self._evaluate_start(model, data, source)

        for index, name in enumerate(self.names):
            phase = cfg.phases[name]
            folder = self.out / name
            done = folder / "result.json"
            if self.resume and done.is_file():
                outcome = PhaseOutcome.read(done)
                if self.progress and self.info.is_main:
                    print(f"{name}: already finished ({outcome.stop_reason}); best mAP@0.5 {_fmt(outcome.best_map50)}")
            else:
                seed_phase(cfg.seed, name)
                if phase.fusion and not model.is_fused:
                    embeddings, descriptions = text
                    model = add_fusion(
                        model,
                        cfg.fusion,
                        embeddings.class_embeddings,
                        encoder=embeddings.encoder,
                        descriptions=descriptions,
                    )
                trainer = PhaseTrainer(
                    model,
                    name,
                    phase,
                    cfg,
                    data,
                    folder,
                    self.info,
                    self.progress,
                    on_evaluation=self.tracker.evaluation,
                    later_epochs=sum(cfg.phases[n].epochs for n in self.names[index + 1 :]),
                )
                outcome = trainer.run(resume=self.resume)
            self.summary["phases"][name] = asdict(outcome)
            if not trained_start and not phase.fusion and self.summary.get("baseline") is None:
                self.summary["baseline"] = {
                    "source": f"phase {name}",
                    "checkpoint": outcome.best_dir,
                    "map50": outcome.best_map50,
                    "map": outcome.best_map,
                }
            self._write_summary()
            model = load_detector(outcome.best_dir)  # the next phase starts from this phase's best

            if name in cfg.gates and index < len(self.names) - 1:
                decision = None
                if self.info.is_main:  # the others have no baseline metrics: they follow the main process
                    reference = self.summary.get("baseline") or self.summary.get("start") or {}
                    decision = phase_gate(
                        cfg.gates[name],
                        outcome,
                        baseline=reference,
                        go_past=name in self.go_past,
                        run=self.out,
                        following=self.names[index + 1],
                    )
                decision = broadcast_object(self.info, decision)
                self._record_gate(decision)
                if self.progress and self.info.is_main:
                    print(f"gate after {name}: {decision.compared}: {decision.reason}")
                    if decision.go_on:
                        print(f"to go on anyway (a decision recorded in summary.json): {decision.go_on}")
                if not decision.proceed:
                    break

        self._choose_final()
        if datasets.test is not None and self.info.is_main:
            self._score_on_test(datasets)
        self.tracker.finish(self.summary)
        barrier(self.info)
        return self.summary

    def _pass_gate_before(self, first: str) -> None:
        """A run continued at ``first`` goes past the gate after the phase before it: the user's decision.

        A gate that let it through stays as it was; one that stopped it (or was never applied, the run
        having stopped earlier) is recorded as overridden, with who and what it said.
        """
        previous = previous_phase(self.cfg, first)
        if previous not in self.cfg.gates or not self.info.is_main:
            return
        recorded = next((g for g in self.summary["gates"] if g["after"] == previous), None)
        if recorded is None:
            outcome = PhaseOutcome.read(self.out / previous / "result.json")
            reference = self.summary.get("baseline") or self.summary.get("start") or {}
            gate = self.cfg.gates[previous]
            decision = phase_gate(gate, outcome, baseline=reference, go_past=True, run=self.out, following=first)
        else:
            decision = GateDecision.from_dict(recorded)
            decision = decision if decision.proceed else override_gate(decision)
        if self.progress:
            print(f"gate after {previous}: {decision.reason}")
        self._record_gate(decision)

    def _record_gate(self, decision: GateDecision) -> None:
        """``decision`` in ``summary.json``, in place of an earlier one after the same phase."""
        gates = self.summary["gates"]
        places = [i for i, g in enumerate(gates) if g["after"] == decision.after]
        if places:
            gates[places[0]] = decision.to_dict()
        else:
            gates.append(decision.to_dict())
        self._write_summary()

    def _evaluate_start(self, model: DefectDetector, data: PhaseData, source: str) -> None:
        metrics = run_validation(
            model.to(self.info.device),
            data.val_loader,
            data.evaluator,
            self.info.device,
            top_k=self.cfg.train.top_k,
            progress=self.progress,
            desc="start validate",
            autocast=resolve_precision(self.cfg.train.amp, self.info.device).autocast(),
        )
        write_metrics(metrics, self.out / "start" / "metrics.json")
        self.summary["start"] = _metric_summary(metrics, source)
        self.summary["baseline"] = {**self.summary["start"], "checkpoint": source}
        self._write_summary()
        if self.progress:
            print(f"start ({source}): val mAP@0.5 {_fmt(metrics.map50)}, mAP@0.5:0.95 {_fmt(metrics.map)}")

    def _score_on_test(self, datasets: RunData) -> None:
        """The final model and the baseline scored on the test images, which selected nothing.

        Writes ``test/<final|baseline>_metrics.json`` and ``..._results.json`` (COCO results of every
        detection, for paired statistics later) and ``summary["test"]``; a fused model's entry also
        holds ``text_usage`` (:class:`~.text_usage.TextUsage`: did it use the text?). With
        ``train.test_baseline`` false only the final model is scored (a study scores its baseline once).
        """
        final = self.summary.get("final") or {}
        baseline = self.summary.get("baseline") or {}
        folder = self.out / "test"
        entries: dict[str, Any] = {}
        scored: dict[str, tuple[Metrics, Path, Path, TextUsage | None]] = {}
        usages: dict[str, TextUsage] = {}
        roles = [("final", final.get("checkpoint"))]
        if self.cfg.train.test_baseline:
            roles.append(("baseline", baseline.get("checkpoint")))
        for role, checkpoint in roles:
            if not checkpoint or not Path(checkpoint, "config.json").is_file():
                continue
            key = (
                str(Path(final.get("source") or checkpoint).resolve())
                if role == "final"
                else str(Path(checkpoint).resolve())
            )
            if key not in scored:
                predictor = Predictor.from_model(
                    load_detector(checkpoint),
                    device=self.info.device,
                    top_k=self.cfg.train.top_k,
                    batch_size=self.cfg.data.eval_batch_size or self.cfg.data.batch_size,
                )
                with TextUsageProbe(predictor.model) as probe:  # the same forward passes, hooked
                    metrics, kept = evaluate_on_index(
                        predictor,
                        datasets.test,
                        keep=[r.id for r in datasets.test.images],
                        progress=self.progress,
                        desc=f"test {role}",
                    )
                results, metrics_file = folder / f"{role}_results.json", folder / f"{role}_metrics.json"
                write_metrics(metrics, metrics_file)
                atomic_write_json(results, detections_to_coco(kept, datasets.test), indent=None)
                scored[key] = (metrics, results, metrics_file, probe.result())
            # a baseline that is also the final model shares the final's files
            metrics, results, metrics_file, usage = scored[key]
            entries[role] = {**_metric_summary(metrics, str(checkpoint)), "results": str(results)}
            entries[role]["metrics"] = str(metrics_file)
            if usage is not None:
                entries[role]["text_usage"] = usage.to_dict()
                usages[role] = usage
        self.summary["test"] = {
            "annotations": str(datasets.test.annotations_file),
            "num_images": len(datasets.test.images),
            "selected_on": str(datasets.val.annotations_file),
            **entries,
        }
        self._write_summary()
        if self.progress and "final" in entries:
            final, base = Scored.from_dict(entries["final"]), Scored.from_dict(entries.get("baseline"))
            print(
                f"test ({len(datasets.test.images)} images, used for nothing else): final mAP@0.5 "
                f"{_fmt(final.map50)}, baseline {_fmt(base.map50 if base else None)}"
            )
            if "final" in usages:
                print(f"final model's {usages['final'].line()}")

    def _choose_final(self) -> None:
        if not self.info.is_main:
            return
        final = choose_final(self.summary, self.out)
        if final is None:
            return
        self.summary["final"] = final.to_dict()
        self._write_summary()
        if self.progress:
            print(f"final: {final.phase} (val mAP@0.5 {_fmt(final.map50)}) -> {final.checkpoint}: {final.reason}")


def run_training(
    cfg: Config,
    out: str | Path,
    phase: str = "all",
    resume: bool = False,
    progress: bool = True,
    go_past: Sequence[str] = (),
    continuation: Continuation | None = None,
) -> dict[str, Any]:
    """Train the phases of ``cfg`` into the run folder ``out``; returns ``summary.json``'s content.

    ``go_past``: phases whose gate the user overrides (a stopped run, resumed, then goes on).
    ``continuation``: whether the run continues the folder's, decided by the caller
    (:func:`~.run_folder.decide_for_run`); None: decided here from ``resume`` and ``phase``.
    """
    return TrainingRun(cfg, Path(out), phase, resume, progress, go_past, continuation).run()
