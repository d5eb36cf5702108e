"""A study's plan: its arms, seeds and training fractions, one ordinary training config per run.

Arms (each a training run of the same phases from the same baseline checkpoint):

- ``text``: the config as it is (the class descriptions);
- ``random``: the same head and schedule with fixed random unit vectors as "text" (isolates language);
- ``continued``: the same phases, data and learning rates without a fusion head (each phase's
  trainable groups minus ``fusion``; a phase left with nothing to train is skipped): isolates
  "more training";
- ``desc:<name>``: one arm per extra descriptions file (which wording separates the pair best).

Training fractions train every arm on nested, class-stratified subsets of the training images;
validation and test stay the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, PhaseConfig, dump_config
from ..data.coco import load_coco
from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text, read_json

BASE_ARMS = ("text", "random", "continued")


@dataclass
class StudyRun:
    """One training run of the study: an arm, a training fraction and a seed."""

    arm: str
    fraction: float
    seed: int
    config: str  # the run's resolved training config (YAML)
    folder: str  # its run folder
    skipped_phases: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.arm}/{fraction_label(self.fraction)}/seed{self.seed}"

    def finished(self, needs_test: bool) -> bool:
        summary = Path(self.folder) / "summary.json"
        if not summary.is_file():
            return False
        data = read_json(summary, "run summary")
        return bool(data.get("final")) and (not needs_test or bool((data.get("test") or {}).get("final")))


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
        return asdict(self)

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


def plan_study(
    cfg: Config,
    out: str | os.PathLike,
    *,
    arms: Sequence[str] = BASE_ARMS,
    seeds: int = 2,
    fractions: Sequence[float] = (1.0,),
    descriptions: Sequence[str] = (),
) -> StudyPlan:
    """Every run of the study, each written as a training config under ``out/configs``."""
    out = Path(out)
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
    for fraction in fractions:
        if fraction >= 1.0:
            subsets[fraction] = cfg
            continue
        images = str(load_coco(cfg.data.train.annotations, cfg.data.train.images).images_dir)
        path = stratified_subset(
            cfg.data.train.annotations, fraction, out / "data" / f"train_{fraction_label(fraction)}.json"
        )
        train = cfg.data.train.model_copy(update={"annotations": str(path), "images": images})
        subsets[fraction] = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": train})})
    runs = []
    for arm in all_arms:
        for fraction, base in subsets.items():
            for seed in range(seeds):
                run_cfg, skipped = base, []
                if arm == "random":
                    run_cfg = base.model_copy(
                        update={"fusion": base.fusion.model_copy(update={"text": "random", "random_seed": seed})}
                    )
                elif arm == "continued":
                    run_cfg, skipped = _continued(base)
                elif arm in extra:
                    run_cfg = base.model_copy(
                        update={"fusion": base.fusion.model_copy(update={"descriptions": extra[arm]})}
                    )
                label = fraction_label(fraction)
                safe = arm.replace(":", "_")
                tags = {"study": cfg.name, "arm": arm, "fraction": label, "seed": str(seed)}
                run_cfg = run_cfg.model_copy(
                    update={
                        "name": f"{cfg.name}-{safe}-{label}-s{seed}",
                        "seed": seed,
                        "train": run_cfg.train.model_copy(
                            update={
                                # one frozen-trunk cache for every run: they start from the same baseline
                                "cache_dir": run_cfg.train.cache_dir or str((out / "cache").resolve()),
                                "mlflow_tags": {**run_cfg.train.mlflow_tags, **tags},
                                "mlflow_experiment": run_cfg.train.mlflow_experiment or cfg.name,
                            }
                        ),
                    }
                )
                config_path = out / "configs" / f"{safe}_{label}_seed{seed}.yaml"
                atomic_write_text(config_path, dump_config(Config.model_validate(run_cfg.model_dump())))
                folder = out / "runs" / safe / label / f"seed{seed}"
                runs.append(StudyRun(arm, float(fraction), seed, str(config_path), str(folder), skipped))
    test = cfg.data.test.annotations if cfg.data.test is not None else None
    return StudyPlan(
        cfg.name, str(out), all_arms, seeds, [float(f) for f in fractions], cfg.model.checkpoint, test, runs, extra
    )


def write_plan(plan: StudyPlan, rule: str) -> Path:
    path = Path(plan.out) / "study.json"
    atomic_write_json(path, {**plan.to_dict(), "rule": rule})
    return path


def read_plan(out: str | os.PathLike) -> StudyPlan:
    data = read_json(Path(out) / "study.json", "study plan")
    data.pop("rule", None)
    return StudyPlan.from_dict(data)


def same_plan(a: StudyPlan, b: StudyPlan) -> bool:
    strip = lambda p: json.dumps({k: v for k, v in p.to_dict().items() if k != "runs"}, sort_keys=True)  # noqa: E731
    return strip(a) == strip(b) and [r.key for r in a.runs] == [r.key for r in b.runs]
