"""A run's datasets: train, validation (selection) and, optionally, test (reporting only)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import Config
from ...data.coco import CocoIndex, load_coco
from ...errors import ConfigError, DataError


@dataclass
class RunData:
    """Training images, the validation images that select (best epoch, gates, final model), and the
    test images that only score the final choice (None without ``data.test``)."""

    train: CocoIndex
    val: CocoIndex
    test: CocoIndex | None = None


def load_datasets(cfg: Config, verify: bool = True, progress: bool = True) -> RunData:
    """The run's train and validation sets (and test set, when ``data.test`` is given), checked alike."""
    missing = [k for k in ("train", "val") if getattr(cfg.data, k) is None]
    if missing:
        keys = " ".join(f"-o data.{k}.annotations=PATH" for k in missing)
        raise ConfigError(
            f"data.{missing[0]} is not set: give the COCO annotations ({keys}) or write them in your config"
        )
    train = load_coco(cfg.data.train.annotations, cfg.data.train.images)
    val = load_coco(cfg.data.val.annotations, cfg.data.val.images)
    if list(train.class_names) != list(val.class_names):
        raise DataError(
            f"train and validation categories differ: {list(train.class_names)} vs {list(val.class_names)} "
            f"({cfg.data.train.annotations} / {cfg.data.val.annotations}); both must list the same classes in the "
            f"same order"
        )
    if not any(a for anns in val.annotations.values() for a in anns if not a.iscrowd):
        raise DataError(f"{cfg.data.val.annotations} has no annotations: validation needs ground truth")
    test = None
    if cfg.data.test is not None:
        test = load_coco(cfg.data.test.annotations, cfg.data.test.images)
        if list(test.class_names) != list(train.class_names):
            raise DataError(
                f"test categories {list(test.class_names)} ({cfg.data.test.annotations}) differ from the training "
                f"ones {list(train.class_names)}; all splits must list the same classes in the same order"
            )
        shared = {r.path.resolve() for r in test.images} & {r.path.resolve() for r in (*train.images, *val.images)}
        if shared:
            raise DataError(
                f"{len(shared)} test image file(s) are also training or validation images (e.g. {sorted(shared)[0]}): "
                f"a test split must hold images nothing was trained or selected on"
            )
    if verify and cfg.data.verify_images:
        for index in (train, val, test):
            if index is not None:
                index.verify_images(progress=progress)
    return RunData(train, val, test)
