"""Rich tables and file listings shared by evaluate, predict, explain and report."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def wide_console(min_width: int = 140):
    """The shared rich console, at least ``min_width`` wide when not a terminal (logs, pipes, tests)."""
    from ._common import console_out

    console = console_out()
    if not console.is_terminal and console.width < min_width:
        console.width = min_width
    return console


def rows_table(rows: Sequence[Mapping[str, Any]], title: str | None = None, numeric: Iterable[str] | None = None):
    """A rich table from display rows (dicts with the same keys, in column order)."""
    from rich.table import Table

    from ..report.values import format_cell, numeric_columns

    table = Table(title=title, title_justify="left")
    if not rows:
        return table
    right = set(numeric) if numeric is not None else numeric_columns(rows)
    columns = list(rows[0])
    for c in columns:
        table.add_column(str(c), justify="right" if c in right else "left", overflow="fold")
    for row in rows:
        cells = [format_cell(row.get(c)).replace("**", "") for c in columns]
        bold = str(row.get(columns[0], "")).startswith("**")
        table.add_row(*cells, style="bold" if bold else None)
    return table


def print_written(
    console, files: Sequence[os.PathLike | str], out: os.PathLike | str | None = None, limit: int = 12
) -> None:
    """``wrote OUT/``, then the main files (relative to ``out``)."""
    paths = [Path(f) for f in files]
    if out is not None:
        console.print(f"wrote {len(paths)} files to {Path(out)}/")
        base = Path(out)
        for p in paths[:limit]:
            try:
                console.print(f"  {p.relative_to(base)}")
            except ValueError:
                console.print(f"  {p}")
        if len(paths) > limit:
            console.print(f"  ... and {len(paths) - limit} more")
    else:
        for p in paths:
            console.print(f"wrote {p}")


def check_device(name: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against what this machine has."""
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    elif name != "cpu" and name != "mps":
        raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    return name


def default_out(kind: str, checkpoint: os.PathLike | str) -> Path:
    """``<kind>/<last two parts of the checkpoint path>``, e.g. ``evaluation/phase1-best``."""
    path = Path(checkpoint).expanduser().resolve()
    parts = [p for p in (path.parent.name, path.stem) if p]
    return Path(kind) / "-".join(parts)
