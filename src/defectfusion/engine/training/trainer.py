"""One training phase: a short loop, with EMA, validation, checkpoints and early stopping beside it.

Phase folder::

    <phase>/metrics.jsonl     one line per evaluation (epoch 0 = the starting point)
    <phase>/results.csv       the same, as a table
    <phase>/best/             EMA weights of the best evaluation (a detector folder) + metrics.json
    <phase>/last/             EMA weights + raw weights + trainer state: what --resume needs
    <phase>/result.json       written when the phase ends (its outcome)
    <phase>/tensorboard/      TensorBoard event files

Validation and checkpoints use the EMA weights. Frozen groups get no gradient, no optimiser state,
keep batch-norm statistics and are not averaged; a frozen trunk may be computed once (.trunk_cache).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ...config import Config, PhaseConfig
from ...data.transforms import FeatureCollator, build_train_dataset
from ...errors import CheckpointError
from ...io import atomic_write_json
from ...models.checkpoint import save_detector
from ...models.detector import DefectDetector
from ...models.groups import set_trainable
from ...structures import Metrics
from ..evaluation.evaluator import write_metrics
from ..evaluation.validation import batch_inputs, run_validation
from .amp_step import scaled_step
from .distributed import DistInfo, barrier, broadcast_object
from .early_stop import early_stop_reason
from .ema import ModelEMA
from .epoch_loader import epoch_loader
from .eta import StepClock, format_duration
from .interrupts import StopRequest, TrainingInterrupted, interruption, stop_requested
from .loss import install_deim_loss
from .phase_log import PhaseLog, evaluation_record
from .phase_records import PhaseData, PhaseOutcome, Score
from .phase_state import STATE_FILE, load_optimizer_state, load_phase_state, save_phase_state
from .precision import resolve_precision
from .schedule import build_scheduler, optimizer_groups
from .seeding import rng_state, set_rng_state
from .trunk_cache import PhaseCache, cache_line, decide, prepare_phase_cache


class PhaseTrainer:
    """Trains ``model`` for one phase; ``run()`` returns the :class:`PhaseOutcome`."""

    def __init__(
        self,
        model: DefectDetector,
        name: str,
        phase: PhaseConfig,
        cfg: Config,
        data: PhaseData,
        folder: Path,
        info: DistInfo,
        progress: bool = True,
        on_evaluation: Callable[[dict[str, Any]], None] | None = None,
        later_epochs: int = 0,
    ):
        self.model, self.name, self.phase, self.cfg, self.data = model, name, phase, cfg, data
        self.folder, self.info, self.progress = Path(folder), info, progress and info.is_main
        train = cfg.train
        self.device = info.device
        self.precision = resolve_precision(train.amp, self.device)

        counts = set_trainable(model, phase.trainable)
        if not any(counts.values()):
            raise CheckpointError(f"phase {name!r}: the groups {phase.trainable} hold no parameters in this model")
        install_deim_loss(model)
        model.to(self.device)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.ema = ModelEMA(model, train.ema.decay, train.ema.warmups) if train.ema.enabled else None

        self.augment = cfg.phase_augment(phase, model.meta.image_size)
        self.train_dataset = build_train_dataset(
            data.train_index, self.augment, model.meta.image_size, seed=cfg.seed, resize=model.meta.resize
        )
        self.cache_decision = decide(cfg, name, phase, model)
        self.cache: PhaseCache | None = None  # filled when the phase starts (prepare_cache), with cache_line
        self.steps_per_epoch = len(self._train_loader(0))
        groups = optimizer_groups(model, phase, train.weight_decay, cfg.fusion.scalar_lr_multiplier)
        self.optimizer = torch.optim.AdamW(groups, betas=train.betas)
        warmup = phase.warmup_steps if phase.warmup_steps is not None else train.warmup_steps
        self.scheduler = build_scheduler(
            self.optimizer, self.steps_per_epoch * phase.epochs, warmup, train.flat_fraction, train.min_lr_factor
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_scaler)
        self.net = model
        if info.distributed:
            # Frozen groups and unused heads leave some parameters without gradients.
            self.net = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )

        self.later_epochs = later_epochs  # epochs of the run's later phases, for the whole-run estimate
        self.clock = StepClock()
        self.epoch, self.step = 0, 0  # epochs completed, optimisation steps taken
        self.epoch_batches, self.epoch_sums = 0, [0.0, 0]  # the epoch in progress: batches done, [loss sum, count]
        self.stop = StopRequest()  # Ctrl-C / SIGTERM: stop after the current step, save, say how to resume
        self.skipped_steps = 0  # steps the fp16 grad scaler skipped (this session)
        self.best = Score()  # the best evaluation so far
        self.initial = Score()  # the evaluation at epoch 0
        self.bad_evals = 0
        self.stop_reason = ""
        self.records: list[dict[str, Any]] = []
        self.log = PhaseLog(self.folder, name, tensorboard=cfg.train.tensorboard) if info.is_main else None
        self.on_evaluation = on_evaluation  # e.g. an experiment tracker
        self.epoch_loss: float | None = None
        self.started = time.monotonic()

    # ------------------------------------------------------------------ data

    def _train_loader(self, epoch: int, skip_batches: int = 0) -> DataLoader:
        cached = self.cache is not None
        return epoch_loader(
            self.cache.train_dataset if cached else self.train_dataset,
            FeatureCollator() if cached else self.data.collator,
            seed=self.cfg.seed,
            epoch=epoch,
            info=self.info,
            batch_size=self.cfg.data.batch_size,
            num_workers=self.cfg.data.num_workers,
            skip_batches=skip_batches,
        )

    # ------------------------------------------------------------------ loop

    def run(self, resume: bool = False) -> PhaseOutcome:
        resumed = resume and (self.folder / "last" / STATE_FILE).is_file()
        if self.log is not None:
            self.log.open(fresh=not resumed)
        if resumed:
            self._load_last()
        self.prepare_cache()
        with self.stop:
            if not resumed:
                self._evaluate_and_decide()  # epoch 0: the starting point
                self._save_last()
            barrier(self.info)
            for epoch in range(self.epoch, self.phase.epochs):
                if self.stop_reason:
                    break
                self._stop_if_asked()
                if not self.train_epoch(epoch):
                    self._save_last()  # mid-epoch: the batches of this epoch already trained
                    self._stop_if_asked()
                self.epoch, self.epoch_batches, self.epoch_sums = epoch + 1, 0, [0.0, 0]
                if self.stop_reason:  # non-finite losses: keep `last`, stop cleanly
                    self._save_last()
                    break
                if self.epoch % self.cfg.train.eval_every == 0 or self.epoch == self.phase.epochs:
                    self._evaluate_and_decide()
                self._save_last()
                barrier(self.info)
        if not self.stop_reason:
            self.stop_reason = f"completed {self.phase.epochs} epochs"
        outcome = PhaseOutcome(
            name=self.name,
            best_epoch=self.best.epoch,
            best_map50=self.best.map50,
            best_map=self.best.map,
            initial_map50=self.initial.map50,
            initial_map=self.initial.map,
            epochs_run=self.epoch,
            stop_reason=self.stop_reason,
            best_dir=str(self.folder / "best"),
            seconds=round(time.monotonic() - self.started, 1),
            frozen_trunk=cache_line(self.name, self.cache_decision, self.cache),  # with repairs made on the way
            **self._last_evaluation(),
        )
        if self.info.is_main:
            atomic_write_json(self.folder / "result.json", asdict(outcome))
            self.log.close()
        barrier(self.info)
        self._stop_if_asked()  # a signal during the last evaluation: the phase is done, the run stops here
        return outcome

    def _last_evaluation(self) -> dict[str, Any]:
        records = self.log.records() if self.log is not None else self.records
        if not records:
            return {}
        last = records[-1]
        return {"last_epoch": last.get("epoch"), "last_map50": last.get("map50"), "last_map": last.get("map")}

    def train_epoch(self, epoch: int) -> bool:
        """Train one epoch (the rest of it, for a phase resumed mid-epoch); False when a stop was asked."""
        self.train_dataset.set_epoch(epoch)
        done = self.epoch_batches
        loader = self._train_loader(epoch, skip_batches=done)
        self.net.train()
        bar = tqdm(
            initial=done,
            total=done + len(loader),
            desc=f"{self.name} {epoch + 1}/{self.phase.epochs}",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=True,
        )
        nonfinite, tick = 0, time.monotonic()
        loss_sum, seen = self.epoch_sums
        last = tick
        for batch in loader:
            if self._asked_to_stop():
                bar.close()
                return False
            self.epoch_batches += 1
            labels = [{k: v.to(self.device) for k, v in t.items()} for t in batch["labels"]]
            with self.precision.autocast():
                loss = self.net(**batch_inputs(batch, self.device), labels=labels).loss
            self.optimizer.zero_grad(set_to_none=True)
            if not self._all_finite(loss):
                nonfinite += 1
                warnings.warn(
                    f"{self.name} epoch {epoch + 1}: non-finite loss ({loss.item()}), step skipped "
                    f"({nonfinite} in a row)",
                    RuntimeWarning,
                    stacklevel=1,
                )
                if nonfinite >= self.cfg.train.max_nonfinite:
                    self.stop_reason = f"{nonfinite} non-finite losses in a row at epoch {epoch + 1}"
                    break
                continue
            nonfinite = 0
            if scaled_step(loss, self.scaler, self.optimizer, self.trainable, self.cfg.train.grad_clip):
                self.scheduler.step()  # a step fp16's scaler skipped (inf/nan gradient) advances neither
                if self.ema is not None:
                    self.ema.update()
                self.step += 1
            else:
                self.skipped_steps += 1
            loss_sum += loss.item()
            seen += 1
            self.epoch_sums = [loss_sum, seen]
            lr = self.optimizer.param_groups[0]["lr"]
            now = time.monotonic()
            rate = seen / max(1e-9, now - tick)
            self.clock.lap(now - last)
            last = now
            left = (self.phase.epochs + self.later_epochs) * self.steps_per_epoch - self.step
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}",
                lr=f"{lr:.2e}",
                it_s=f"{rate:.2f}",
                run_left=format_duration(self.clock.eta(left)),
            )
            bar.update()
            if self.log is not None and self.step % self.cfg.train.log_every == 0:
                self.log.scalar("train_loss", loss.item(), self.step)
                self.log.scalar("amp_skipped_steps", self.skipped_steps, self.step)  # fp16's scaler (0 otherwise)
                for group in self.optimizer.param_groups:
                    self.log.scalar(f"lr/{group['name']}", group["lr"], self.step)
        bar.close()
        self.epoch_loss = loss_sum / seen if seen else None
        return True

    def _asked_to_stop(self) -> bool:
        return stop_requested(self.stop, self.info)

    def _stop_if_asked(self) -> None:
        if not self._asked_to_stop():
            return
        epoch = self.phase.epochs if self.stop_reason else self.epoch
        raise TrainingInterrupted(
            interruption(self.name, self.stop, epoch, self.phase.epochs, self.epoch_batches, self.folder)
        )

    def _all_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
        if self.info.distributed:  # every process must skip together, or DDP would hang
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item() > 0)

    def prepare_cache(self) -> None:
        """Compute the frozen trunk's output of the images it lacks (when the phase caches), say so in one line."""
        if self.cache_decision.use:
            self.cache, self.cache_decision = prepare_phase_cache(
                self.model,
                self._eval_model(),
                self.cfg,
                self.name,
                self.data,
                self.augment,
                self.cache_decision,
                run_folder=self.folder.parent,
                precision=self.precision,
                info=self.info,
                progress=self.progress,
            )
        self.cache_line = cache_line(self.name, self.cache_decision, self.cache)
        if self.progress:
            tqdm.write(self.cache_line)

    # ------------------------------------------------------------------ evaluation

    def _eval_model(self) -> DefectDetector:
        return self.ema.module if self.ema is not None else self.model

    def _evaluate_and_decide(self) -> None:
        decision = None
        if self.info.is_main:
            metrics = run_validation(
                self._eval_model(),
                self.cache.val_loader if self.cache and self.cache.val_loader else self.data.val_loader,
                self.data.evaluator,
                self.device,
                top_k=self.cfg.train.top_k,
                progress=self.progress,
                autocast=self.precision.autocast(),
                desc=f"{self.name} validate",
            )
            decision = self._decide(metrics)
        decision = broadcast_object(self.info, decision)
        self.best, self.bad_evals, self.stop_reason = decision["best"], decision["bad_evals"], decision["stop"]
        self.initial = decision["initial"]

    def _decide(self, metrics: Metrics) -> dict[str, Any]:
        map50, map_ = metrics.map50, metrics.map
        if self.epoch == 0:
            self.initial = Score(map50, map_)
        best_map50 = self.best.map50
        improved = best_map50 is None or (map50 is not None and map50 > best_map50)
        if improved:
            self.best = Score(map50, map_, self.epoch)
            self.bad_evals = 0
            save_detector(
                self._eval_model(), self.folder / "best", extra={"metrics.json": lambda p: write_metrics(metrics, p)}
            )
        else:
            self.bad_evals += 1
        stop = early_stop_reason(map50, self.best, self.bad_evals, self.cfg.train.early_stop)
        self._log_evaluation(metrics, improved)
        return {"best": self.best, "bad_evals": self.bad_evals, "stop": stop, "initial": self.initial}

    def _log_evaluation(self, metrics: Metrics, improved: bool) -> None:
        record = evaluation_record(self.name, self.epoch, self.step, metrics, self.epoch_loss, self.optimizer, improved)
        self.records.append(record)
        self.log.append(record)
        if self.on_evaluation is not None:
            self.on_evaluation(record)
        if self.progress:
            fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
            best = " (best)" if improved else ""
            tqdm.write(
                f"{self.name} epoch {self.epoch}/{self.phase.epochs}: val mAP@0.5 {fmt(metrics.map50)}, "
                f"mAP@0.5:0.95 {fmt(metrics.map)}{best}"
            )

    # ------------------------------------------------------------------ state

    def _save_last(self) -> None:
        if not self.info.is_main:
            return
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(),
        }
        summary = {
            "phase": self.name,
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best.to_dict(),
            "initial": self.initial.to_dict(epoch=False),
            "bad_evals": self.bad_evals,
            "stop_reason": self.stop_reason,
            # a phase stopped mid-epoch: the next epoch's batches already trained, and for how many processes
            "epoch_batches": self.epoch_batches,
            "epoch_loss": self.epoch_sums,
            "world_size": self.info.world_size,
        }
        save_phase_state(self.folder, self.model, self._eval_model(), state, summary)

    def _load_last(self) -> None:
        ema_model = self.ema.module if self.ema is not None else None
        state, summary = load_phase_state(self.folder, self.model, ema_model)
        load_optimizer_state(self.optimizer, state, self.folder)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best, self.initial = Score(**summary["best"]), Score(**summary["initial"])
        self.bad_evals, self.stop_reason = int(summary["bad_evals"]), summary["stop_reason"]
        self.epoch_batches, self.epoch_sums = int(summary.get("epoch_batches", 0)), summary.get("epoch_loss", [0.0, 0])
        # Evaluations logged after the last save (a kill between the two) are redone: drop them,
        # and a torn last line with them, so that no epoch appears twice.
        if self.log is not None:
            self.records = self.log.keep_through(self.epoch)
        of = f"{self.phase.epochs} (step {self.step})"
        where = f"{self.epoch_batches} batches into epoch {self.epoch + 1}/{of}" if self.epoch_batches else ""
        if self.epoch_batches and summary.get("world_size", 1) != self.info.world_size:
            where = (
                f"at the start of epoch {self.epoch + 1}/{of}: its first {self.epoch_batches} batches were drawn for "
                f"{summary.get('world_size')} processes, this run has {self.info.world_size}"
            )
            self.epoch_batches, self.epoch_sums = 0, [0.0, 0]
        if self.progress:
            tqdm.write(f"{self.name}: resumed {where or f'after epoch {self.epoch}/{of}'}")
