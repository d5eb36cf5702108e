"""Tensors computed once per image, kept on disk: the store behind the frozen-trunk cache.

A store is one folder, named by a key that says how its tensors were computed (the caller's hash of
the model part, the input size, the dtype), holding one safetensors file per image named by the
SHA-256 of the image file's bytes: a changed image, checkpoint or size never finds stale tensors.
Files are written atomically (a killed fill leaves whole files and resumes where it stopped) and
read memory-mapped. :class:`FeatureDataset` serves them as training samples.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torchvision import tv_tensors

from ..errors import DataError
from ..io import atomic_path, atomic_write_json
from .coco import CocoIndex
from .transforms import ImageSize, resized_target

try:
    import fcntl
except ImportError:  # Windows: no lock, concurrent fills only repeat work (writes stay atomic)
    fcntl = None

_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: a file is read once per process


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (remembered while the file's size and modification time stay the same)."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
        memo = (str(resolved), stat.st_size, stat.st_mtime_ns)
        if memo not in _DIGESTS:
            with open(resolved, "rb") as f:
                _DIGESTS[memo] = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return _DIGESTS[memo]


class FeatureStore:
    """``<root>/<key>/<image sha256>.safetensors``, plus ``key.json`` describing how they were computed."""

    def __init__(self, root: str | os.PathLike, key: str, description: dict[str, Any] | None = None):
        self.folder = Path(root).expanduser() / key
        self.key = key
        if description is not None and not (self.folder / "key.json").is_file():
            atomic_write_json(self.folder / "key.json", description)

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.safetensors"

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def write(self, digest: str, tensors: Sequence[torch.Tensor]) -> None:
        with atomic_path(self.path(digest), suffix=".safetensors") as tmp:
            save_file({f"level{i}": t.detach().to("cpu").contiguous() for i, t in enumerate(tensors)}, str(tmp))

    def read(self, digest: str) -> list[torch.Tensor]:
        path = self.path(digest)
        try:
            stored = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise DataError(
                f"cached features {path} cannot be read ({exc}); delete the file (or its folder) and run again: "
                f"it is recomputed"
            ) from None
        return [stored[f"level{i}"] for i in range(len(stored))]

    @contextmanager
    def filling(self) -> Iterator[None]:
        """Held while one process lists and fills the store: another run filling the same store (a study's
        runs two at a time) waits, then finds the files instead of computing them again."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+b") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.safetensors")) if self.folder.is_dir() else 0


class FeatureDataset(torch.utils.data.Dataset):
    """``(feature maps, target)`` samples of a :class:`CocoIndex` from a :class:`FeatureStore`.

    The target is :class:`~.coco.CocoDetection`'s after the resize (and, with ``sanitize_min_size``,
    ``SanitizeBoundingBoxes``) that the stored maps' images went through, computed from the boxes:
    the image itself is never read. ``digests[i]`` is the content hash of ``index.images[i]``.
    """

    def __init__(
        self,
        index: CocoIndex,
        store: FeatureStore,
        digests: Sequence[str],
        image_size: ImageSize,
        resize: str = "plain",
        sanitize_min_size: float | None = None,
    ) -> None:
        if len(digests) != len(index.images):
            raise ValueError(f"{len(digests)} digests for {len(index.images)} images")
        self.index, self.store, self.digests = index, store, list(digests)
        # the targets never change (no random step): computed once, from the boxes
        self._targets = []
        for record in index.images:
            boxes, labels = index.training_targets(record.id)
            size = (record.height, record.width)
            target = {
                "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size),
                "labels": labels,
                "image_id": record.id,
                "orig_size": torch.tensor(size, dtype=torch.int64),
            }
            self._targets.append(resized_target(target, image_size, resize, sanitize_min_size))

    def __len__(self) -> int:
        return len(self.index.images)

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes with the epoch (the interface of the augmenting datasets)."""

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], dict[str, Any]]:
        return self.store.read(self.digests[i]), dict(self._targets[i])
