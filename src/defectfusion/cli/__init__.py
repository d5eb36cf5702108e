"""Command line: each subcommand parses its arguments, calls one engine function, prints the result.

One module per subcommand in this package, each with ``register(subparsers)``. Errors a user can
cause are printed on one line (``error: ...``) with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from ..errors import DefectFusionError, TrainingInterrupted
from ..version import __version__
from ._common import apply_threads

Handler = Callable[[argparse.Namespace], int | None]

# ----------------------------------------------------------------------------- main

# Subcommand modules, in the order `--help` lists them.
COMMANDS = [
    "demo",
    "synth",
    "data",
    "train",
    "study",
    "encode_text",
    "convert",
    "evaluate",
    "predict",
    "explain",
    "report",
    "export",
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
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # One readable line per warning, not the source location and code of the warn() call.
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.debug or os.environ.get("DEFECTFUSION_DEBUG")):
        warnings.showwarning = _show_warning
    handler: Handler = args.handler
    try:
        apply_threads(getattr(args, "compute_threads", None))
        return int(handler(args) or 0)
    except TrainingInterrupted as exc:  # saved, and its message says how to go on
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
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
