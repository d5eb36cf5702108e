"""A study's plan: its arms, seeds and training fractions, one ordinary training config per run.

Arms (each a training run of the same phases from the same baseline checkpoint):

- ``text``: the config as it is (the class descriptions);
- ``shuffled``: the same descriptions' embeddings assigned to the wrong classes (a derangement fixed
  by the seed): the geometry of real text without its meaning;
- ``random``: the same head and schedule with fixed random unit vectors as "text" (isolates language
  from extra parameters);
- ``continued``: the same phases, data and learning rates without a fusion head (each phase's
  trainable groups minus ``fusion``; a phase left with nothing to train is skipped): isolates
  "more training";
- ``desc:<name>``: one arm per extra descriptions file (which wording separates the pair best).

Training fractions train every arm on nested, class-stratified subsets of the training images;
validation and test stay the same.

A plan is computed by :func:`plan_study` and saved by :func:`write_plan` (``study.json`` and every
run's config). Where a saved plan exists, :func:`plan_study` writes nothing over it: the new plan is
compared first (:func:`plan_differences`, :func:`check_same_plan`), so a refused resume leaves the
saved study resumable as it was. Settings that change speed, not results
(:data:`~..config.compare.SPEED_KEYS`: ``--threads``, ``--workers``, ...) do not make another plan.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, PhaseConfig, apply_overrides, dump_config, load_config, validate_config
from ..config.compare import SPEED_KEYS, config_differences
from ..data.coco import load_coco
from ..engine.training.run_record import read_run_record
from ..engine.training.tracking import PARENT_TAG
from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text, read_json

BASE_ARMS = ("text", "shuffled", "random", "continued")


@dataclass
class StudyRun:
    """One training run of the study: an arm, a training fraction and a seed."""

    arm: str
    fraction: float
    seed: int
    config: str  # the run's resolved training config (YAML)
    folder: str  # its run folder
    skipped_phases: list[str] = field(default_factory=list)
    #: the config a new plan holds until :func:`write_plan` writes it to ``config`` (None: the file is it)
    resolved: Config | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "fraction": self.fraction,
            "seed": self.seed,
            "config": self.config,
            "folder": self.folder,
            "skipped_phases": list(self.skipped_phases),
        }

    def load(self) -> Config:
        """The run's training config (the plan's own, or its file)."""
        return self.resolved if self.resolved is not None else load_config(self.config)

    @property
    def key(self) -> str:
        return f"{self.arm}/{fraction_label(self.fraction)}/seed{self.seed}"

    def finished(self, needs_test: bool) -> bool:
        record = read_run_record(self.folder)
        return record is not None and record.finished and (not needs_test or record.test_results is not None)


@dataclass
class StudyPlan:
    name: str
    out: str
    arms: list[str]
    seeds: int
    fractions: list[float]
    baseline: str  # the checkpoint every run starts from
    test: str | None  # test annotations (None: the validation images, flagged optimistic)
    runs: list[StudyRun]
    descriptions: dict[str, str] = field(default_factory=dict)  # arm -> descriptions file

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "runs"}
        return {**copy.deepcopy(data), "runs": [r.to_dict() for r in self.runs]}

    def run(self, key: str) -> StudyRun:
        """The run called ``key`` (``arm/fraction/seedK``)."""
        return next(r for r in self.runs if r.key == key)

    def own_baseline(self, fraction: float) -> StudyRun | None:
        """The fraction's own baseline run (``--fraction-baselines``), or None: the study's baseline."""
        return next((r for r in self.runs if r.arm == BASELINE_ARM and r.fraction == fraction), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyPlan:
        runs = [StudyRun(**r) for r in data.pop("runs")]
        return cls(runs=runs, **data)


def fraction_label(fraction: float) -> str:
    return f"{round(fraction * 100):g}pct"


def _arm_name(descriptions: str) -> str:
    return "desc:" + Path(descriptions).stem


def _continued(cfg: Config) -> tuple[Config, list[str]]:
    """The same phases without a fusion head; phases that only trained the fusion are skipped."""
    phases, order, skipped = dict(cfg.phases), [], []
    for name in cfg.order:
        phase = cfg.phases[name]
        groups = [g for g in phase.trainable if g != "fusion"]
        if not groups:
            skipped.append(name)
            continue
        lr = {g: phase.lr_for(g) for g in groups}
        phases[name] = PhaseConfig(**{**phase.model_dump(), "trainable": groups, "lr": lr, "fusion": False})
        order.append(name)
    if not order:
        raise ConfigError("the 'continued' arm has no phase left: every phase of the config trains only the fusion")
    gates = {k: v for k, v in cfg.gates.items() if k in order}
    return cfg.model_copy(update={"phases": phases, "order": order, "gates": gates}), skipped


def stratified_subset(annotations: str | os.PathLike, fraction: float, out: Path, seed: int = 0) -> Path:
    """A COCO file with ``fraction`` of the images, stratified by each image's rarest class.

    Nested: the same seed orders the images the same way, so a smaller fraction's images are a
    subset of a larger one's. Images without objects form a stratum of their own.
    """
    index = load_coco(annotations)
    counts = np.bincount(
        [a.label for anns in index.annotations.values() for a in anns], minlength=len(index.class_names)
    )
    strata: dict[int, list[int]] = {}
    for record in index.images:
        labels = {a.label for a in index.annotations[record.id] if not a.iscrowd}
        key = min(labels, key=lambda c: (counts[c], c)) if labels else -1
        strata.setdefault(key, []).append(record.id)
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for key in sorted(strata):
        ids = list(rng.permutation(strata[key]))
        chosen.update(int(i) for i in ids[: max(1, round(fraction * len(ids)))])
    data = read_json(annotations, "annotations file")
    data["images"] = [im for im in data["images"] if im["id"] in chosen]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in chosen]
    atomic_write_json(out, data, indent=None)
    return out


BASELINE_ARM = "baseline"  # a fraction's own baseline run (``--fraction-baselines``)


def _fraction_baseline(cfg: Config, label: str) -> Config:
    """The config's ``baseline`` phase alone, from ``model.backbone_weights`` or from scratch."""
    phase = cfg.phases.get("baseline")
    if phase is None or phase.fusion:
        raise ConfigError(
            "--fraction-baselines trains each fraction's baseline with the config's `baseline` phase (a phase "
            "without fusion), and this config has none: add phases.baseline (every packaged config includes "
            "baseline.yml), or drop --fraction-baselines"
        )
    model = cfg.model.model_copy(update={"checkpoint": None})
    return cfg.model_copy(
        update={"name": f"{cfg.name}-baseline-{label}", "order": ["baseline"], "gates": {}, "model": model}
    )


def plan_study(
    cfg: Config,
    out: str | os.PathLike,
    *,
    arms: Sequence[str] = BASE_ARMS,
    seeds: int = 3,
    fractions: Sequence[float] = (1.0,),
    descriptions: Sequence[str] = (),
    mlflow_parent: str | None = None,
    fraction_baselines: bool = False,
) -> StudyPlan:
    """Every run of the study, each with its training config (``out/configs/*.yaml``).

    The configs are written here only when ``out`` holds no saved plan yet; over a saved plan they
    wait for :func:`write_plan`, after the new plan was found to be the same study.
    ``mlflow_parent``: the study's MLflow run, which every run's MLflow run is nested under.
    ``fraction_baselines``: every fraction below 1 gets a baseline of its own, trained on its subset
    by the config's ``baseline`` phase (its runs, arm ``baseline``, come first); its arms start from it.
    """
    out = Path(out)
    saved = (out / "study.json").is_file()
    unknown = [a for a in arms if a not in BASE_ARMS]
    if unknown:
        raise ConfigError(
            f"unknown study arm(s) {unknown}; arms are {', '.join(BASE_ARMS)} (descriptions files are "
            f"arms of their own)"
        )
    if seeds < 1:
        raise ConfigError(f"a study needs at least one seed per arm, got {seeds}")
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"training fractions must be in (0, 1], got {list(fractions)}")
    if not cfg.model.checkpoint:
        raise ConfigError(
            "a study starts every run from one baseline: set model.checkpoint (e.g. a converted "
            "phase-1 model or a trained baseline run's final/)"
        )
    if cfg.data.train is None or cfg.data.val is None:
        raise ConfigError("a study needs data.train and data.val (and, to report honest numbers, data.test)")
    extra = {_arm_name(d): str(Path(d).expanduser().resolve()) for d in descriptions}
    all_arms = list(dict.fromkeys([*arms, *extra]))
    subsets: dict[float, Config] = {}
    runs: list[StudyRun] = []

    def add(arm: str, fraction: float, seed: int, run_cfg: Config, skipped: list[str]) -> StudyRun:
        label, safe = fraction_label(fraction), arm.replace(":", "_")
        tags = {"study": cfg.name, "arm": arm, "fraction": label, "seed": str(seed)}
        if mlflow_parent:
            tags[PARENT_TAG] = mlflow_parent
        train = run_cfg.train.model_copy(
            update={
                # one frozen-trunk cache for every run: they start from the same baseline
                "cache_dir": run_cfg.train.cache_dir or str((out / "cache").resolve()),
                # the study scores the baseline on the test images once for every run
                "test_baseline": False,
                "mlflow_tags": {**run_cfg.train.mlflow_tags, **tags},
                "mlflow_experiment": run_cfg.train.mlflow_experiment or cfg.name,
            }
        )
        name = run_cfg.name if arm == BASELINE_ARM else f"{cfg.name}-{safe}-{label}-s{seed}"
        resolved = Config.model_validate(
            run_cfg.model_copy(update={"name": name, "seed": seed, "train": train}).model_dump()
        )
        config_path = out / "configs" / f"{safe}_{label}_seed{seed}.yaml"
        if not saved:
            atomic_write_text(config_path, dump_config(resolved))
        folder = out / "runs" / safe / label / f"seed{seed}"
        run = StudyRun(arm, float(fraction), seed, str(config_path), str(folder), skipped, resolved=resolved)
        runs.append(run)
        return run

    for fraction in fractions:
        if fraction >= 1.0:
            subsets[fraction] = cfg
            continue
        images = str(load_coco(cfg.data.train.annotations, cfg.data.train.images).images_dir)
        path = stratified_subset(
            cfg.data.train.annotations, fraction, out / "data" / f"train_{fraction_label(fraction)}.json"
        )
        train = cfg.data.train.model_copy(update={"annotations": str(path), "images": images})
        subset = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": train})})
        if fraction_baselines:
            own = add(BASELINE_ARM, fraction, 0, _fraction_baseline(subset, fraction_label(fraction)), [])
            model = subset.model.model_copy(update={"checkpoint": str(Path(own.folder) / "final")})
            subset = subset.model_copy(update={"model": model})
        subsets[fraction] = subset
    for arm in all_arms:
        for fraction, base in subsets.items():
            for seed in range(seeds):
                run_cfg, skipped = base, []
                if arm in ("random", "shuffled"):
                    run_cfg = base.model_copy(
                        update={"fusion": base.fusion.model_copy(update={"text": arm, "random_seed": seed})}
                    )
                elif arm == "continued":
                    run_cfg, skipped = _continued(base)
                elif arm in extra:
                    run_cfg = base.model_copy(
                        update={"fusion": base.fusion.model_copy(update={"descriptions": extra[arm]})}
                    )
                add(arm, fraction, seed, run_cfg, skipped)
    test = cfg.data.test.annotations if cfg.data.test is not None else None
    return StudyPlan(
        cfg.name, str(out), all_arms, seeds, [float(f) for f in fractions], cfg.model.checkpoint, test, runs, extra
    )


def write_plan(plan: StudyPlan, rule: str) -> Path:
    """``study.json``, and every run config the plan holds (a new plan's, or new speed settings)."""
    for run in plan.runs:
        if run.resolved is not None:
            atomic_write_text(Path(run.config), dump_config(run.resolved))
    path = Path(plan.out) / "study.json"
    atomic_write_json(path, {**plan.to_dict(), "rule": rule})
    return path


def read_plan(out: str | os.PathLike) -> StudyPlan:
    data = read_json(Path(out) / "study.json", "study plan")
    data.pop("rule", None)
    return StudyPlan.from_dict(data)


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)


def plan_differences(saved: StudyPlan, given: StudyPlan) -> list[str]:
    """What makes ``given`` another study than ``saved``, one line each (empty: the same study).

    The plans' arms, seeds, fractions, baseline, test set and descriptions, then every run's config,
    except the keys that change speed, not results (:data:`SPEED_KEYS`).
    """
    a, b = saved.to_dict(), given.to_dict()
    lines = [
        f"{key}: saved {_show(a[key])}, given {_show(b[key])}" for key in a if key != "runs" and a[key] != b.get(key)
    ]
    if lines:
        return lines
    if [r.key for r in saved.runs] != [r.key for r in given.runs]:
        return [f"runs: saved {[r.key for r in saved.runs]}, given {[r.key for r in given.runs]}"]
    found: dict[str, tuple[Any, Any, list[str]]] = {}
    for old, new in zip(saved.runs, given.runs, strict=True):
        if old.resolved is None and not Path(old.config).is_file():
            continue  # nothing saved to keep
        for key, was, now in config_differences(old.load(), new.load()):
            found.setdefault(key, (was, now, []))[2].append(old.key)
    total = len(saved.runs)
    return [
        f"{key}: saved {_show(was)}, given {_show(now)} "
        f"({'every run' if len(keys) == total else 'runs ' + ', '.join(keys)})"
        for key, (was, now, keys) in found.items()
    ]


def same_plan(a: StudyPlan, b: StudyPlan) -> bool:
    """Whether ``b`` is the study ``a`` planned (it may differ in speed settings only)."""
    return not plan_differences(a, b)


def check_same_plan(saved: StudyPlan, given: StudyPlan) -> None:
    """A ConfigError naming what differs, and the commands that go on, when ``given`` is another study."""
    differences = plan_differences(saved, given)
    if not differences:
        return
    shown = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else "")
    raise ConfigError(
        f"{Path(saved.out) / 'study.json'} plans another study than the one given ({shown}). To go on with the "
        f"saved study as it was planned: `defectfusion study --resume --out {given.out}` (without a config; "
        f"--parallel may change). To run the new one, give another --out. Only speed settings may differ on a "
        f"resume ({', '.join(SPEED_KEYS)}, e.g. --threads, --workers)."
    )


def with_speed_settings(plan: StudyPlan, overrides: Sequence[str]) -> StudyPlan:
    """The saved ``plan`` with speed-only ``overrides`` (``train.threads=4``, ...) applied to every run.

    For a study resumed without its config. An override of any other key is refused: it would make
    another study. The new configs are written by :func:`write_plan`.
    """
    if not overrides:
        return plan
    runs = []
    for run in plan.runs:
        old = run.load()
        new = validate_config(apply_overrides(old.model_dump(mode="json"), overrides), f"{run.config} + overrides")
        changed = [key for key, _, _ in config_differences(old, new)]
        if changed:
            raise ConfigError(
                f"a resumed study keeps its plan: {', '.join(changed)} would make another study. Only speed "
                f"settings may change on a resume ({', '.join(SPEED_KEYS)}); to train with other settings, give "
                f"the config and another --out"
            )
        runs.append(replace(run, resolved=new))
    return replace(plan, runs=runs)
