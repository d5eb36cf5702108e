"""Helpers shared by the subcommands: console output and small formatting."""

from __future__ import annotations


def console_out():
    """A rich console for tables and progress (no syntax highlighting of numbers)."""
    from rich.console import Console

    return Console(highlight=False)


def add_threads_flag(parser) -> None:
    """``--threads N``: the CPU threads this command computes with (set once, before it runs)."""
    parser.add_argument(
        "--threads",
        dest="compute_threads",  # train and study have their own --threads: a config key for their runs
        type=int,
        default=None,
        metavar="N",
        help="CPU threads to compute with (default: torch's choice; on a machine shared with other jobs 1 is "
        "often the fastest)",
    )


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads for this process (``--threads``); a value below 1 is a clear error."""
    if threads is None:
        return
    from ..errors import ConfigError

    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
