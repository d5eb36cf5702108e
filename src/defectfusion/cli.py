"""Command line: each subcommand parses its arguments, calls one engine function, prints the result.

Errors a user can cause are printed on one line (``error: ...``) with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import DefectFusionError

Handler = Callable[[argparse.Namespace], int | None]


def _console():
    from rich.console import Console

    return Console(highlight=False)


# ----------------------------------------------------------------------------- encode-text


def _add_encode_text(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode-text",
        help="embed class descriptions with a text encoder and save them",
        description="Embed every prompt of a descriptions file, average per class, save as safetensors "
        "and print the class-by-class cosine similarity.",
    )
    p.add_argument("--descriptions", default="defects6", help="descriptions YAML or packaged set name (default: defects6)")
    p.add_argument("--encoder", default="clip:openai/clip-vit-base-patch32",
                   help="clip:NAME|FOLDER, sentence:NAME|FOLDER|minilm, or file:PATH (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--cache-dir", type=Path, default=None, help="embedding cache folder (default: ~/.cache/defectfusion/text)")
    p.set_defaults(handler=_run_encode_text)


def _run_encode_text(args: argparse.Namespace) -> int:
    from .data.descriptions import load_descriptions
    from .models.text import encode_descriptions, write_embeddings_file

    descriptions = load_descriptions(args.descriptions)
    embeddings = encode_descriptions(descriptions, args.encoder, args.cache_dir)
    write_embeddings_file(embeddings, args.out)
    console = _console()
    console.print(similarity_table(embeddings.class_names, embeddings.similarity_matrix().tolist(),
                                   title=f"cosine similarity of class texts ({args.encoder})"))
    prompts = sum(len(p) for p in embeddings.prompts)
    console.print(f"{len(embeddings.class_names)} classes, {prompts} prompts, "
                  f"dimension {embeddings.class_embeddings.shape[1]}")
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


# ----------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_encode_text,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defectfusion",
        description="Text-visual fusion for DEIMv2 industrial defect detectors.",
    )
    parser.add_argument("--version", action="version", version=f"defectfusion {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except DefectFusionError as exc:
        if args.debug or os.environ.get("DEFECTFUSION_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
