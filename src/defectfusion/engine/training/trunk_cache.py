"""A phase's frozen-trunk cache: decide whether it holds, fill it, serve it, mend it.

A phase that freezes the backbone and the encoder and does not augment its images gets the same
encoder output for an image in every epoch. Under ``train.cache_frozen: auto`` (the default) such a
phase computes that output once per image, train and validation images alike, stores it
(:class:`~..data.feature_store.FeatureStore`) and starts every training step and every validation
from the stored maps; what trains, the denoising queries (fresh noise each step), the matcher and
the loss run every step as before. ``on`` makes a phase where it does not hold an error; ``off``
never caches.

The store's key hashes the trunk's weights and architecture, the input size and resize, the
normalisation, the autocast dtype, the device type, the torch and transformers versions and the
cache's :data:`FORMAT`; ``key.json`` in the folder lists them. Files are named by the image's content
hash. A changed checkpoint, image, size or library finds nothing stale; a resumed or repeated phase
(and phase 2 after phase 1: the same frozen trunk) finds what was computed. Under data parallelism
each process computes its share of the missing images; all of them read the shared folder.

A damaged file costs its recomputation, never the run (``auto`` and ``on`` alike), in two places:

- when the phase prepares its cache, the main process checks every file's size and header (under
  the store's lock): a missing file is computed, a truncated or unreadable one recomputed with the
  rest;
- every read checks the tensors against the digest in the file's metadata; a file that fails, or
  went missing or damaged since, is recomputed where the batches are iterated (the process holding
  the model, never a loader worker) from the image and the phase's model, written again, and served
  in its batch: the step or the validation goes on with the maps a sound file would have given.

Each recomputed file is one :class:`CacheRepairWarning` naming the file and why; the phase's cache
line counts them by kind (the count of a process's own repairs: each process mends what it reads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ...config import Config, PhaseConfig, TrainAugmentConfig
from ...data.coco import CocoDetection, CocoIndex
from ...data.feature_store import Damage, FeatureDataset, FeatureStore, MendingLoader, file_digest
from ...data.transforms import DetectionCollator, FeatureCollator, build_eval_transform
from ...errors import ConfigError
from ...models.detector import DefectDetector
from ...models.trunk import TRUNK_GROUPS, trunk_features, trunk_fingerprint, trunk_is_frozen, trunk_variability
from .distributed import DistInfo, barrier, broadcast_object
from .phase_records import PhaseData
from .precision import Precision

FORMAT = 2  # bump when what a stored file holds changes (2: a digest of the tensors in each file)
SPARE_BYTES = 1 << 30  # left free on the cache's disk


class CacheRepairWarning(UserWarning):
    """A frozen-trunk cache file was missing, truncated, unreadable or corrupt, and was recomputed."""


def config_obstacles(cfg: Config, phase: PhaseConfig) -> list[str]:
    """What stops a phase from reusing its trunk's output, as far as the config tells."""
    trains = [g for g in TRUNK_GROUPS if g in phase.trainable]
    if trains:  # the reason that matters: the augmentation could not make up for it
        return [f"it trains the {' and the '.join(trains)}"]
    steps = cfg.phase_augment(phase).random_steps(phase.epochs)
    if steps:
        return [f"its augmentation is random: {', '.join(steps)} (`augment: false` in the phase turns it off)"]
    return []


def check_cache_setting(cfg: Config, names: Sequence[str]) -> None:
    """With ``cache_frozen: on``, a ConfigError before anything trains when a phase to run cannot cache."""
    if cfg.train.cache_frozen != "on":
        return
    for name in names:
        obstacles = config_obstacles(cfg, cfg.phases[name])
        if obstacles:
            raise ConfigError(_refusal(name, obstacles))


def _refusal(name: str, obstacles: Sequence[str]) -> str:
    return (
        f"train.cache_frozen is on, but phase {name!r} cannot reuse a frozen trunk: {'; '.join(obstacles)}. "
        f"Set train.cache_frozen: auto (cache the phases where it holds) or off"
    )


@dataclass
class CacheDecision:
    use: bool
    reason: str  # why (or why not), for the one line the phase prints


def decide(cfg: Config, name: str, phase: PhaseConfig, model: DefectDetector) -> CacheDecision:
    """Whether phase ``name`` caches, once ``set_trainable`` has frozen ``model``'s groups."""
    if cfg.train.cache_frozen == "off":
        return CacheDecision(False, "train.cache_frozen is off")
    obstacles = config_obstacles(cfg, phase) + trunk_variability(model)
    if not obstacles and not trunk_is_frozen(model):
        obstacles.append("a trunk parameter trains")
    if obstacles:
        if cfg.train.cache_frozen == "on":
            raise ConfigError(_refusal(name, obstacles))
        return CacheDecision(False, "; ".join(obstacles))
    return CacheDecision(True, "backbone and encoder frozen, images not augmented")


@dataclass
class PhaseCache:
    """A filled store and the loaders that read it."""

    store: FeatureStore
    train_dataset: FeatureDataset
    val_loader: MendingLoader | None  # None: the model validated has another trunk (it computes its own)
    images: int  # distinct images stored
    computed: int  # of them, computed by this phase (absent when it started)
    repairs: Counter[str] = field(default_factory=Counter)  # files recomputed by this process, by kind of damage

    def describe(self) -> str:
        size = self.store.size_on_disk() / 1e6
        now = f", {self.computed} computed now" if self.computed else ""
        if self.repairs:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.repairs.items()))
            now += f", {self.repairs.total()} recomputed ({kinds})"
        return f"{self.images} images, {size:,.0f} MB in {self.store.folder}{now or ', all found'}"


def cache_line(name: str, decision: CacheDecision, cache: PhaseCache | None) -> str:
    """The line a phase prints (and keeps in its result.json) about its trunk."""
    if cache is not None:
        return f"{name}: frozen trunk cached ({decision.reason}): {cache.describe()}"
    return f"{name}: trunk computed every step ({decision.reason})"


def store_for(
    cfg: Config, model: DefectDetector, fingerprint: str, precision: Precision, device: torch.device, run_folder: Path
) -> FeatureStore:
    """The store of ``model``'s trunk (``fingerprint``) at its input size, dtype and device type."""
    meta = model.meta
    description = {
        "format": FORMAT,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trunk": fingerprint,
        "preset": meta.preset,
        "image_size": list(meta.image_size),
        "resize": meta.resize,
        "image_mean": list(meta.image_mean),
        "image_std": list(meta.image_std),
        "dtype": str(precision.dtype if precision.enabled else torch.float32).removeprefix("torch."),
        "device_type": device.type,
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cfg.train.cache_dir).expanduser() if cfg.train.cache_dir else run_folder / "cache"
    return FeatureStore(root / "trunk", key, description)


def prepare_phase_cache(
    model: DefectDetector,
    eval_model: DefectDetector,
    cfg: Config,
    name: str,
    data: PhaseData,
    augment: TrainAugmentConfig,
    decision: CacheDecision,
    *,
    run_folder: Path,
    precision: Precision,
    info: DistInfo,
    progress: bool,
) -> tuple[PhaseCache | None, CacheDecision]:
    """Fill the phase's store (the images it lacks) and build its datasets (training targets as ``augment``, the
    phase's augmentation without random steps, leaves them); no cache (and why) where auto gives up for want of
    disk space."""
    device = info.device
    train_index, val_index = data.train_index, data.val_index
    fingerprint = trunk_fingerprint(model)
    store = store_for(cfg, model, fingerprint, precision, device, run_folder)
    show = progress and info.is_main
    hashing = dict(desc=f"{name} hash images", leave=False, disable=not show)
    digests = {
        split: [file_digest(r.path) for r in tqdm(index.images, **hashing)]
        for split, index in (("train", train_index), ("val", val_index))
    }
    sources: dict[str, tuple[CocoIndex, int]] = {}
    for index, split in ((train_index, "train"), (val_index, "val")):
        for position, digest in enumerate(digests[split]):
            sources.setdefault(digest, (index, position))
    repairs: Counter[str] = Counter()
    with store.filling() if info.is_main else contextlib.nullcontext():
        # the main process lists what is missing or damaged (under the lock): every process then fills its share
        listed, damaged = None, []
        if info.is_main:
            checking = dict(desc=f"{name} check cache", leave=False, disable=not show)
            problems = [p for p in (store.check(d) for d in tqdm(sorted(sources), **checking)) if p is not None]
            listed, damaged = [p.digest for p in problems], [p for p in problems if p.kind != "missing"]
        missing = broadcast_object(info, listed)
        if missing:
            room = broadcast_object(info, _room(store, model, missing, precision, device) if info.is_main else None)
            if room is not None:
                if cfg.train.cache_frozen == "on":
                    raise ConfigError(room)
                return None, CacheDecision(False, room)
            for damage in damaged:
                _say_recomputed(name, store, damage)
                repairs[damage.kind] += 1
            mine = missing[info.rank :: info.world_size]
            _fill(store, model, [sources[d] for d in mine], mine, cfg, precision, device, show, name)
            barrier(info)

    mend = _mender(store, model, sources, cfg, precision, device, name, repairs)
    image_size, resize = model.meta.image_size, model.meta.resize
    sanitize = augment.sanitize_min_size if augment.sanitize else None
    train_dataset = FeatureDataset(train_index, store, digests["train"], image_size, resize, sanitize, mend=mend)
    val_loader = None
    if eval_model is model or trunk_fingerprint(eval_model) == fingerprint:
        val_dataset = FeatureDataset(val_index, store, digests["val"], image_size, resize, mend=mend)
        val_loader = val_dataset.loader(
            DataLoader(
                val_dataset,
                batch_size=cfg.data.eval_batch_size or cfg.data.batch_size,
                shuffle=False,
                num_workers=cfg.data.num_workers,
                collate_fn=FeatureCollator(),
            )
        )
    computed = len(missing) - repairs.total()
    return PhaseCache(store, train_dataset, val_loader, len(sources), computed, repairs), decision


def _say_recomputed(name: str, store: FeatureStore, damage: Damage) -> None:
    warnings.warn(
        f"{name}: frozen-trunk cache file {store.path(damage.digest)} {damage.detail}: recomputed",
        CacheRepairWarning,
        stacklevel=3,
    )


def _mender(
    store: FeatureStore,
    model: DefectDetector,
    sources: dict[str, tuple[CocoIndex, int]],
    cfg: Config,
    precision: Precision,
    device: torch.device,
    name: str,
    repairs: Counter[str],
) -> Callable[[Damage], list[torch.Tensor]]:
    """What a loader calls on a file it could not read: the image's maps computed again, written, counted."""

    def mend(damage: Damage) -> list[torch.Tensor]:
        _say_recomputed(name, store, damage)
        [(_, maps)] = _computed(model, [sources[damage.digest]], [damage.digest], cfg, precision, device)
        maps = [t.detach().to("cpu").contiguous() for t in maps]
        try:
            store.write(damage.digest, maps)
        except OSError as exc:  # the maps serve this batch all the same; the next read tries again
            warnings.warn(f"{name}: cannot write {store.path(damage.digest)} ({exc})", CacheRepairWarning, stacklevel=2)
        repairs[damage.kind] += 1
        return maps

    return mend


def _room(
    store: FeatureStore, model: DefectDetector, missing: Sequence[str], precision: Precision, device: torch.device
) -> str | None:
    """None when the store's disk holds the missing images' maps (measured on a blank image), else why not."""
    height, width = model.meta.image_size
    blank = torch.zeros(1, 3, height, width, device=device)
    with _evaluating(model), torch.no_grad(), precision.autocast():
        per_image = sum(t.numel() * t.element_size() for t in trunk_features(model, blank))
    needed = per_image * len(missing)
    folder = store.folder
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed + SPARE_BYTES <= free:
        return None
    return (
        f"the frozen-trunk cache needs ~{needed / 1e9:.1f} GB ({len(missing)} images x {per_image / 1e6:.1f} MB) in "
        f"{folder}, and only {free / 1e9:.1f} GB is free there (1 GB is kept spare); set train.cache_dir to a "
        f"disk with room, or train.cache_frozen: off"
    )


@contextmanager
def _evaluating(model: DefectDetector) -> Iterator[None]:
    """Eval mode within: the trunk is frozen and has no randomness, so it computes what training would."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _fill(
    store: FeatureStore,
    model: DefectDetector,
    sources: Sequence[tuple[CocoIndex, int]],
    digests: Sequence[str],
    cfg: Config,
    precision: Precision,
    device: torch.device,
    show: bool,
    name: str,
) -> None:
    bar = tqdm(total=len(digests), desc=f"{name} cache frozen trunk", disable=not show, dynamic_ncols=True)
    for digest, maps in _computed(model, sources, digests, cfg, precision, device):
        store.write(digest, maps)
        bar.update()
    bar.close()


def _computed(
    model: DefectDetector,
    sources: Sequence[tuple[CocoIndex, int]],
    digests: Sequence[str],
    cfg: Config,
    precision: Precision,
    device: torch.device,
) -> Iterator[tuple[str, list[torch.Tensor]]]:
    """``(digest, maps)`` of each image ``sources[i]`` (a COCO index and a position in it), in batches."""
    meta = model.meta
    transform = build_eval_transform(meta.image_size, meta.resize)
    collate = DetectionCollator(meta.image_mean, meta.image_std)
    readers: dict[int, CocoDetection] = {}
    batch_size = cfg.data.eval_batch_size or cfg.data.batch_size
    for start in range(0, len(digests), batch_size):
        chunk = range(start, min(start + batch_size, len(digests)))
        samples = []
        for i in chunk:
            index, position = sources[i]
            if id(index) not in readers:
                readers[id(index)] = CocoDetection(index, transform)
            samples.append(readers[id(index)][position])
        pixels = collate(samples)["pixel_values"].to(device)
        with _evaluating(model), torch.no_grad(), precision.autocast():
            maps = trunk_features(model, pixels)
        for row, i in enumerate(chunk):
            yield digests[i], [level[row].clone() for level in maps]
