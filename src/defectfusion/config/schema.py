"""The typed configuration: every section a config file may hold, with defaults and checks.

Unknown keys are refused (``extra="forbid"``); :mod:`.loading` turns the refusal into a
did-you-mean message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which detector, at which input size, with which weights."""

    preset: str = Field("dinov3_m", description="architecture name (see `defectfusion.models.presets`)")
    checkpoint: str | None = Field(None, description="starting weights: a folder saved by defectfusion or HF")
    backbone_weights: str | None = Field(
        None,
        description="without a checkpoint: pretrained backbone weights (the original's vitt_distill.pt, "
        "DINOv3 .pth, PPHGNetV2_*_stage1.pth, or a transformers backbone folder)",
    )
    image_size: tuple[int, int] | None = Field(None, description="input (H, W); default: the preset's")
    resize: Literal["plain", "letterbox"] | None = Field(
        None,
        description="how images reach image_size: plain (stretch, as phase 1 was trained) or letterbox (aspect "
        "kept, padded); default: what the starting model was trained with (plain for a new model)",
    )
    semantics: Literal["original", "transformers"] = Field(
        "original", description="compute as the original DEIMv2 code (default) or as transformers does"
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="extra Deimv2Config keyword arguments")

    @model_validator(mode="after")
    def _one_start(self) -> ModelConfig:
        if self.checkpoint and self.backbone_weights:
            raise ValueError(
                "give either checkpoint (a whole trained detector) or backbone_weights (a pretrained "
                "backbone under a random detector), not both"
            )
        return self


class FusionConfig(_Section):
    """The text-fusion class head."""

    enabled: bool = True
    text: Literal["descriptions", "shuffled", "random"] = Field(
        "descriptions",
        description="the controls: 'shuffled': the real class embeddings assigned to the wrong classes (a "
        "derangement fixed by random_seed: text geometry without its meaning); 'random': fixed random unit "
        "vectors of the same shape (no text at all)",
    )
    descriptions: str = Field("defects6", description="packaged name or path of a descriptions YAML")
    encoder: str = Field("clip:openai/clip-vit-base-patch32", description="clip:NAME | sentence:NAME | file:PATH")
    cache_dir: str | None = Field(None, description="text-embedding cache; default ~/.cache/defectfusion/text")
    query_selection: bool = Field(False, description="also fuse the encoder's query-selection score head")
    temperature: float = Field(0.07, gt=0, description="initial temperature of the contrastive logits")
    gate_init: float = Field(0.0, description="initial gate; 0 keeps the base model's outputs exactly")
    random_seed: int = Field(0, description="seed of the control embeddings (random vectors, or the shuffle)")
    scalar_lr_multiplier: float = Field(
        100.0,
        gt=0,
        description="the fusion heads' scalars (gate, logit scale, logit bias) train at the fusion group's lr "
        "times this, in a param group of their own (fusion/scalars, no weight decay): Adam moves a scalar by "
        "about lr per step, so at the fusion lr the gate cannot leave 0 in a short phase. 100 by measurement "
        "(benchmarks/fusion_scalar_lr.py: the text path opens where it helps, validation mAP unharmed); "
        "1 trains the scalars at the fusion lr",
    )


GroupName = Literal["backbone", "encoder", "decoder", "class_head", "fusion"]
ALL_GROUPS: tuple[str, ...] = ("backbone", "encoder", "decoder", "class_head", "fusion")


class TrainAugmentConfig(_Section):
    """Training augmentation; defaults follow DEIMv2's recipe (``configs/base/deimv2.yml``)."""

    photometric_prob: float = Field(
        0.5,
        ge=0,
        le=1,
        description="p of each photometric step (brightness, contrast, saturation, hue, channel order)",
    )
    zoom_out_prob: float = Field(0.5, ge=0, le=1, description="p of zoom-out (image placed on a larger canvas)")
    zoom_out_fill: int = Field(0, ge=0, le=255, description="canvas value around a zoomed-out image")
    zoom_out_side_range: tuple[float, float] = Field((1.0, 4.0), description="canvas side / image side, min and max")
    iou_crop_prob: float = Field(0.8, ge=0, le=1, description="p of an SSD-style IoU crop")
    flip_prob: float = Field(0.5, ge=0, le=1, description="p of a horizontal flip (kept after stop_epoch)")
    mosaic_prob: float = Field(0.5, ge=0, le=1, description="p that a sample becomes a 2x2 mosaic")
    mosaic_output_size: int = Field(640, ge=2, description="side of the square mosaic canvas; each tile fits a quarter")
    mosaic_rotation: float = Field(10.0, ge=0, description="random affine after mosaic: max rotation in degrees")
    mosaic_translate: tuple[float, float] = Field(
        (0.1, 0.1), description="random affine: max shift as a fraction of the canvas"
    )
    mosaic_scale: tuple[float, float] = Field((0.5, 1.5), description="random affine: scale range")
    mosaic_fill: int = Field(0, ge=0, le=255, description="value of empty mosaic canvas")
    start_epoch: int = Field(0, ge=0, description="heavy augmentation starts at this epoch")
    mosaic_stop_epoch: int | None = Field(None, ge=0, description="mosaic off from this epoch on; default stop_epoch")
    stop_epoch: int | None = Field(
        None,
        ge=0,
        description="heavy augmentation (mosaic, photometric, zoom-out, IoU crop) off from this epoch on; None: never",
    )
    sanitize: bool = Field(True, description="drop boxes narrower/shorter than sanitize_min_size after geometry")
    sanitize_min_size: float = Field(1.0, gt=0, description="minimum box side in pixels")

    @model_validator(mode="after")
    def _check_ranges(self) -> TrainAugmentConfig:
        lo, hi = self.zoom_out_side_range
        if not 1.0 <= lo <= hi:
            raise ValueError(f"zoom_out_side_range must satisfy 1 <= min <= max, got {self.zoom_out_side_range}")
        lo, hi = self.mosaic_scale
        if not 0 < lo <= hi:
            raise ValueError(f"mosaic_scale must satisfy 0 < min <= max, got {self.mosaic_scale}")
        if not all(0 <= t <= 1 for t in self.mosaic_translate):
            raise ValueError(f"mosaic_translate values must be in [0, 1], got {self.mosaic_translate}")
        return self

    def heavy_enabled(self, epoch: int) -> bool:
        """Whether photometric distortion, zoom-out and IoU crop run in ``epoch``."""
        return self.start_epoch <= epoch and (self.stop_epoch is None or epoch < self.stop_epoch)

    def random_steps(self, epochs: int) -> list[str]:
        """The random steps that run in epochs ``0 .. epochs-1`` (empty: every epoch sees the same images)."""
        steps = [f"flip_prob {self.flip_prob}"] if self.flip_prob > 0 else []
        heavy = [e for e in range(epochs) if self.heavy_enabled(e)]
        if heavy:
            window = f"epochs {heavy[0] + 1}-{heavy[-1] + 1}"
            for key in ("photometric_prob", "zoom_out_prob", "iou_crop_prob"):
                if getattr(self, key) > 0:
                    steps.append(f"{key} {getattr(self, key)} ({window})")
        if any(self.mosaic_enabled(e) for e in range(epochs)):
            steps.append(f"mosaic_prob {self.mosaic_prob}")
        return steps

    def without_randomness(self) -> TrainAugmentConfig:
        """These settings with every random step off: only the resize (and sanitize) remain."""
        off = dict.fromkeys(("photometric_prob", "zoom_out_prob", "iou_crop_prob", "flip_prob", "mosaic_prob"), 0.0)
        return self.model_copy(update=off)

    def mosaic_enabled(self, epoch: int) -> bool:
        """Whether mosaic may run in ``epoch`` (inside the heavy window, before mosaic_stop_epoch)."""
        stop = self.mosaic_stop_epoch
        return self.mosaic_prob > 0 and self.heavy_enabled(epoch) and (stop is None or epoch < stop)


class DataSplit(_Section):
    annotations: str = Field(..., description="COCO annotations json")
    images: str | None = Field(
        None, description="images folder; default: beside the json ('images/' or the same folder)"
    )


class DataConfig(_Section):
    train: DataSplit | None = None
    val: DataSplit | None = Field(None, description="selects: best epoch, gates, the final model")
    test: DataSplit | None = Field(
        None,
        description="optional: only scores the final model and the baseline, never selects (reports compare on it)",
    )
    batch_size: int = Field(4, ge=1, description="images per step (per process)")
    eval_batch_size: int | None = Field(None, ge=1, description="default: batch_size")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes")
    verify_images: bool = Field(True, description="open every image once before training (names corrupt files)")
    confusable_pair: tuple[str, str] | None = Field(
        None, description="the look-alike classes reports call out; default: the descriptions' confusable_pair"
    )
    augment: TrainAugmentConfig = Field(default_factory=TrainAugmentConfig)


class EMAConfig(_Section):
    enabled: bool = True
    decay: float = Field(0.9999, gt=0, lt=1)
    warmups: float = Field(1000.0, gt=0, description="updates over which the decay ramps up (original ModelEMA)")


class EarlyStopConfig(_Section):
    drop: float | None = Field(0.02, ge=0, description="stop when validation mAP@0.5 falls this far below its best")
    patience: int | None = Field(None, ge=1, description="stop after this many evaluations without a new best")


class TrainConfig(_Section):
    """Settings shared by every phase."""

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: Literal["off", "bf16", "fp16", "auto"] = Field(
        "auto",
        description="mixed precision: auto (bf16 on GPUs with native bf16, compute capability 8.0+; fp16 with a "
        "grad scaler on older GPUs; off on CPU) | bf16 (also on CPU) | fp16 (CUDA, with a grad scaler) | off",
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's choice")
    dist_timeout_minutes: float = Field(
        120.0,
        gt=0,
        description="data-parallel: how long processes wait for the main one (it alone validates, "
        "verifies images, encodes text and saves)",
    )
    weight_decay: float = Field(1.25e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(500, ge=0, description="linear lr warm-up, in optimisation steps")
    flat_fraction: float = Field(0.5, ge=0, le=1, description="share of the phase at full lr before cosine decay")
    min_lr_factor: float = Field(0.05, ge=0, le=1, description="final lr as a fraction of the base lr")
    grad_clip: float | None = Field(0.1, gt=0, description="max gradient norm; null disables clipping")
    ema: EMAConfig = Field(default_factory=EMAConfig)
    eval_every: int = Field(1, ge=1, description="validate every N epochs (and after the last)")
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)
    max_nonfinite: int = Field(5, ge=1, description="stop the phase after this many non-finite losses in a row")
    no_aug_epochs: int = Field(2, ge=0, description="last epochs of a phase without heavy augmentation")
    top_k: int = Field(300, ge=1, description="detections per image kept for evaluation")
    log_every: int = Field(10, ge=1, description="TensorBoard loss logging interval, in steps")
    tensorboard: bool = True
    cache_frozen: Literal["auto", "on", "off"] = Field(
        "auto",
        description="compute a frozen backbone + encoder once per image and reuse it every epoch: auto (when the "
        "phase freezes them and does not augment) | on (an error where that does not hold) | off",
    )
    cache_dir: str | None = Field(
        None, description="where the frozen-trunk cache lives (keyed by weights, image, size, dtype); default RUN/cache"
    )
    test_baseline: bool = Field(
        True,
        description="score the baseline on the test split too, beside the final model; a study scores it once "
        "for all its runs and sets this false",
    )

    @field_validator("cache_frozen", mode="before")
    @classmethod
    def _cache_from_bool(cls, value: Any) -> Any:
        # YAML reads a bare on / off as true / false
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_from_bool(cls, value: Any) -> Any:
        # configs written before the modes said true / false
        if isinstance(value, bool):
            return "auto" if value else "off"
        return value

    mlflow: str | None = Field(
        None, description="MLflow tracking URI (e.g. sqlite:///runs/mlflow.db): also log params, metrics, artifacts"
    )
    mlflow_experiment: str | None = Field(None, description="MLflow experiment; default: the run's name")
    mlflow_tags: dict[str, str] = Field(default_factory=dict, description="tags of the MLflow run (a study sets them)")


class PhaseConfig(_Section):
    """One training phase: which parameter groups train, at which learning rates, for how long."""

    trainable: list[GroupName]
    lr: float | dict[GroupName, float] = Field(..., description="one lr for all trainable groups, or one per group")
    epochs: int = Field(20, ge=1)
    fusion: bool = Field(True, description="false: the plain detector (the baseline phase)")
    warmup_steps: int | None = Field(None, ge=0, description="overrides train.warmup_steps for this phase")
    augment: bool = Field(
        True,
        description="false: this phase sees the images as they are (data.augment's random steps off), which "
        "lets a frozen trunk be computed once (train.cache_frozen)",
    )

    @field_validator("trainable")
    @classmethod
    def _some_groups(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one parameter group must train")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _lr_covers_trainable(self) -> PhaseConfig:
        if isinstance(self.lr, dict):
            missing = [g for g in self.trainable if g not in self.lr]
            if missing:
                raise ValueError(f"lr has no value for trainable group(s) {missing}")
        if not self.fusion and "fusion" in self.trainable:
            raise ValueError("a phase without fusion cannot train the 'fusion' group")
        return self

    def lr_for(self, group: str) -> float:
        return self.lr[group] if isinstance(self.lr, dict) else float(self.lr)


class GateConfig(_Section):
    """Decides after a phase whether the next one runs (the seed: 0.80 / 0.82 on mAP@0.5)."""

    metric: Literal["map50", "map"] = "map50"
    value: Literal["best", "last"] = Field(
        "best",
        description="the phase's best validation metric (it includes the phase's starting point) or its "
        "last evaluation",
    )
    min: float | None = Field(None, description="continue only if the phase's best metric >= min")
    max: float | None = Field(None, description="continue only if it is < max (otherwise: good enough, stop)")
    relative_to_baseline: bool = Field(False, description="min/max are differences from the baseline's metric")


class Config(_Section):
    """The whole configuration (see ``configs/*.yml`` for commented examples)."""

    name: str = "run"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    phases: dict[str, PhaseConfig] = Field(default_factory=dict, description="phases by name")
    order: list[str] = Field(default_factory=list, description="phases `train --phase all` runs, in order")
    gates: dict[str, GateConfig] = Field(default_factory=dict, description="gate applied after the named phase")

    def phase_augment(self, phase: PhaseConfig, image_size: tuple[int, int] | None = None) -> TrainAugmentConfig:
        """What a phase trains with: ``data.augment`` with its defaults filled in for the phase (heavy steps stop
        ``train.no_aug_epochs`` before its end, the mosaic canvas is the input's side), or with every random
        step off when the phase says ``augment: false``."""
        augment = self.data.augment
        updates: dict[str, Any] = {}
        if augment.stop_epoch is None:
            updates["stop_epoch"] = max(0, phase.epochs - self.train.no_aug_epochs)
        if image_size is not None and "mosaic_output_size" not in augment.model_fields_set:
            updates["mosaic_output_size"] = max(image_size)
        augment = augment.model_copy(update=updates)
        return augment if phase.augment else augment.without_randomness()

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str) -> str:
        if not value or "/" in value or value in {".", ".."}:
            raise ValueError(f"name must be a plain folder name, got {value!r}")
        return value

    @model_validator(mode="after")
    def _order_names_phases(self) -> Config:
        unknown = [p for p in self.order if p not in self.phases]
        if unknown:
            raise ValueError(f"order lists phases that are not defined: {unknown}; defined: {list(self.phases)}")
        stray = [g for g in self.gates if g not in self.phases]
        if stray:
            raise ValueError(f"gates refer to undefined phases: {stray}")
        for after, gate in self.gates.items():
            # A phase's best includes its epoch-0 evaluation, its starting model, which is never below
            # the baseline (phase 1 starts at it, every later phase at the previous best).
            if (
                gate.value == "best"
                and gate.relative_to_baseline
                and gate.max is None
                and (gate.min is None or gate.min <= 0)
            ):
                raise ValueError(
                    f"gate after {after!r} (best {gate.metric} >= baseline {gate.min or 0:+g}) cannot fail: a phase's "
                    f"best includes its starting point, which is never below the baseline. Give min > 0, compare "
                    f"the phase's last evaluation (value: last), or remove the gate (gates: {{{after}: null}})"
                )
        return self
