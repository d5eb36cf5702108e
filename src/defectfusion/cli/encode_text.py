"""`defectfusion encode-text`: embed class descriptions and show how alike the classes read."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ._common import console_out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode-text",
        help="embed class descriptions with a text encoder and save them",
        description="Embed every prompt of a descriptions file, average per class, save as safetensors "
        "and print the class-by-class cosine similarity.",
    )
    p.add_argument(
        "--descriptions", default="defects6", help="descriptions YAML or packaged set name (default: defects6)"
    )
    p.add_argument(
        "--encoder",
        default="clip:openai/clip-vit-base-patch32",
        help="clip:NAME|FOLDER, sentence:NAME|FOLDER|minilm, or file:PATH (default: %(default)s)",
    )
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="embedding cache folder (default: ~/.cache/defectfusion/text)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..commands.encode_text import encode_text

    embeddings = encode_text(args.descriptions, args.encoder, args.out, args.cache_dir)
    console = console_out()
    console.print(
        similarity_table(
            embeddings.class_names,
            embeddings.similarity_matrix().tolist(),
            title=f"cosine similarity of class texts ({args.encoder})",
        )
    )
    prompts = sum(len(p) for p in embeddings.prompts)
    console.print(
        f"{len(embeddings.class_names)} classes, {prompts} prompts, dimension {embeddings.class_embeddings.shape[1]}"
    )
    console.print(f"wrote {args.out}")
    return 0


def similarity_table(names: Sequence[str], matrix: Sequence[Sequence[float]], title: str = ""):
    """A rich table of a square similarity matrix; columns are numbered to fit a terminal.

    The most similar other class of each row is bold: the pair the text may confuse.
    """
    from rich.table import Table

    table = Table(title=title or None)
    table.add_column("class")
    for i in range(len(names)):
        table.add_column(str(i), justify="right")
    for i, name in enumerate(names):
        off = [v for j, v in enumerate(matrix[i]) if j != i]
        top = max(off) if off else None
        cells = []
        for j, value in enumerate(matrix[i]):
            text = f"{value:.3f}"
            cells.append(f"[bold]{text}[/bold]" if j != i and value == top else text)
        table.add_row(f"{i} {name}", *cells)
    return table
