"""Tensors computed once per image, kept on disk: the store behind the frozen-trunk cache.

A store is one folder, named by a key that says how its tensors were computed (the caller's hash of
the model part, the input size, the dtype, the library versions), holding one safetensors file per
image named by the SHA-256 of the image file's bytes: a changed image, checkpoint or size never finds
stale tensors. Each file carries in its metadata the SHA-256 of its tensors (dtype, shape and raw
bytes of ``level0``, ``level1``, ... in that order), written before the file is; files are written
atomically and flushed to the disk before their rename (a killed fill leaves whole files and resumes
where it stopped).

Damage is found in two places. :meth:`FeatureStore.check` looks at a file's size and header only
(missing, truncated, unreadable); :meth:`FeatureStore.read` checks the tensors against their digest
too (bytes changed on disk). :class:`FeatureDataset` serves the files as training samples; one it
cannot read becomes a hole in its batch, which :class:`MendingLoader` fills in the process that
iterates the batches (the one holding the model, never a worker) by the ``mend`` function its
caller supplies.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
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


@dataclass(frozen=True)
class Damage:
    """Why a stored file cannot be used: ``kind`` counts it (missing, truncated, unreadable, corrupt),
    ``detail`` says it in words that follow the file's path."""

    digest: str
    kind: str
    detail: str


class DamagedEntry(DataError):
    """A stored file that is missing, truncated, unreadable or whose tensors fail their digest."""

    def __init__(self, path: Path, damage: Damage):
        super().__init__(
            f"cached features {path} {damage.detail}; delete the file (or its folder) and run again: it is recomputed"
        )
        self.path, self.damage = path, damage


def tensors_digest(tensors: Sequence[torch.Tensor]) -> str:
    """SHA-256 of tensors in order: each one's dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for i, tensor in enumerate(tensors):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"level{i}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


_MAX_HEADER = 1 << 24  # a safetensors header longer than this is garbage, not a header


class FeatureStore:
    """``<root>/<key>/<image sha256>.safetensors``, plus ``key.json`` describing how they were computed."""

    def __init__(self, root: str | os.PathLike, key: str, description: dict[str, Any] | None = None):
        self.folder = Path(root).expanduser() / key
        self.key = key
        if description is not None and not (self.folder / "key.json").is_file():
            atomic_write_json(self.folder / "key.json", description)

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.safetensors"

    def write(self, digest: str, tensors: Sequence[torch.Tensor]) -> None:
        levels = [t.detach().to("cpu").contiguous() for t in tensors]
        metadata = {"sha256": tensors_digest(levels), "levels": str(len(levels))}
        with atomic_path(self.path(digest), suffix=".safetensors") as tmp:  # flushed to the disk before its rename
            save_file({f"level{i}": t for i, t in enumerate(levels)}, str(tmp), metadata=metadata)

    def check(self, digest: str) -> Damage | None:
        """What is wrong with a file as its size and header tell (None: nothing); its tensors are not read."""
        try:
            with open(self.path(digest), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(8)
                length = int.from_bytes(head, "little") if len(head) == 8 else 0
                head += f.read(length if length <= _MAX_HEADER else 0)
            _layout(head, size)
        except FileNotFoundError:
            return Damage(digest, "missing", "is missing")
        except OSError as exc:
            return Damage(digest, "unreadable", f"cannot be read ({exc.strerror or exc})")
        except _Unusable as exc:
            return Damage(digest, *exc.args)
        return None

    def read(self, digest: str) -> list[torch.Tensor]:
        """The stored tensors, checked against their digest; a :class:`DamagedEntry` if they cannot be had."""
        path = self.path(digest)
        try:
            raw = path.read_bytes()
            metadata = _layout(raw, len(raw))
            stored = load_bytes(raw)
            levels = [stored[f"level{i}"] for i in range(int(metadata["levels"]))]
            if tensors_digest(levels) != metadata["sha256"]:
                raise _Unusable("corrupt", "holds tensors that fail their SHA-256 (the file changed on disk)")
        except FileNotFoundError:
            raise DamagedEntry(path, Damage(digest, "missing", "is missing")) from None
        except OSError as exc:
            raise DamagedEntry(path, Damage(digest, "unreadable", f"cannot be read ({exc.strerror or exc})")) from None
        except (SafetensorError, KeyError, ValueError) as exc:
            raise DamagedEntry(path, Damage(digest, "unreadable", f"cannot be read ({exc})")) from None
        except _Unusable as exc:
            raise DamagedEntry(path, Damage(digest, *exc.args)) from None
        return levels

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


class _Unusable(Exception):
    """``(kind, detail)`` of a file that cannot be used, raised by :func:`_layout` and :meth:`FeatureStore.read`."""


def _layout(head: bytes, size: int) -> dict[str, str]:
    """The metadata of a safetensors file whose first bytes are ``head`` and whose length is ``size``, once the
    header parses, names a digest and accounts for every byte; else :class:`_Unusable`."""
    if size < 8:
        raise _Unusable("truncated", f"is truncated ({size} bytes)")
    length = int.from_bytes(head[:8], "little")
    if length > _MAX_HEADER:
        raise _Unusable("unreadable", "does not start with a safetensors header")
    if size < 8 + length:
        raise _Unusable("truncated", f"is truncated ({size} bytes, its header alone needs {8 + length})")
    try:
        header = json.loads(head[8 : 8 + length])
        metadata = header.pop("__metadata__", None) or {}
        end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise _Unusable("unreadable", "has a header that is not safetensors JSON") from None
    if not isinstance(metadata, dict) or "sha256" not in metadata or "levels" not in metadata:
        raise _Unusable("unreadable", "has no digest (written by another version)")
    expected = 8 + length + end
    if size < expected:
        raise _Unusable("truncated", f"is truncated ({size} of its {expected} bytes)")
    if size > expected:
        raise _Unusable("unreadable", f"is longer than its header says ({size} bytes, not {expected})")
    return metadata


class FeatureDataset(torch.utils.data.Dataset):
    """``(feature maps, target)`` samples of a :class:`CocoIndex` from a :class:`FeatureStore`.

    The target is :class:`~.coco.CocoDetection`'s after the resize (and, with ``sanitize_min_size``,
    ``SanitizeBoundingBoxes``) that the stored maps' images went through, computed from the boxes:
    the image itself is never read. ``digests[i]`` is the content hash of ``index.images[i]``.

    With ``mend`` (``Damage -> feature maps``, the maps written again), a file that cannot be read
    is served as ``(None, target + {"damage": Damage})``, which :class:`~.transforms.FeatureCollator`
    leaves unstacked and :class:`MendingLoader` fills; without, it is a :class:`DamagedEntry`.
    """

    def __init__(
        self,
        index: CocoIndex,
        store: FeatureStore,
        digests: Sequence[str],
        image_size: ImageSize,
        resize: str = "plain",
        sanitize_min_size: float | None = None,
        mend: Callable[[Damage], list[torch.Tensor]] | None = None,
    ) -> None:
        if len(digests) != len(index.images):
            raise ValueError(f"{len(digests)} digests for {len(index.images)} images")
        self.index, self.store, self.digests, self.mend = index, store, list(digests), mend
        self.serves_holes = mend is not None  # kept in worker processes, which get no ``mend``
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

    def __getstate__(self) -> dict[str, Any]:
        # a worker process gets the dataset without ``mend`` (it holds the model): the loader mends
        return {**self.__dict__, "mend": None}

    def __len__(self) -> int:
        return len(self.index.images)

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes with the epoch (the interface of the augmenting datasets)."""

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor] | None, dict[str, Any]]:
        try:
            return self.store.read(self.digests[i]), dict(self._targets[i])
        except DamagedEntry as exc:
            if not self.serves_holes:
                raise DataError(str(exc)) from None  # one message, as a worker process passes it on
            return None, {**self._targets[i], "damage": exc.damage}

    def loader(self, batches: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        """``batches`` (a DataLoader over this dataset) with damaged files recomputed, where this dataset mends."""
        return MendingLoader(batches, self.mend) if self.mend is not None else batches


class MendingLoader:
    """A loader's batches with their holes (files a :class:`FeatureDataset` could not read) filled by ``mend``,
    in the process that iterates: the maps of every image of a batch stacked as ``trunk_features``."""

    def __init__(self, batches: Iterable[dict[str, Any]], mend: Callable[[Damage], list[torch.Tensor]]):
        self.batches, self.mend = batches, mend

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # the loader's iterator made now, as iter(loader) would (a DataLoader draws its seed here)
        return self._mended(iter(self.batches))

    def _mended(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            if "trunk_maps" in batch:
                maps = list(batch.pop("trunk_maps"))
                for row, damage in batch.pop("damaged").items():
                    maps[row] = self.mend(damage)
                batch["trunk_features"] = [torch.stack(level) for level in zip(*maps, strict=True)]
            yield batch
