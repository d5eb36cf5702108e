"""``defectfusion encode-text``: a descriptions file -> its class text embeddings in a file."""

from __future__ import annotations

import os
from pathlib import Path

from ..data.descriptions import load_descriptions
from ..models.text import TextEmbeddings, encode_descriptions, write_embeddings_file


def encode_text(
    descriptions: str | os.PathLike, encoder: str, out: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> TextEmbeddings:
    """Embed every prompt of ``descriptions`` with ``encoder`` and write them (and the class means) to ``out``."""
    embeddings = encode_descriptions(load_descriptions(descriptions), encoder, cache_dir)
    write_embeddings_file(embeddings, Path(out))
    return embeddings
