"""Helpers shared by the subcommands: console output and small formatting."""

from __future__ import annotations


def console_out():
    """A rich console for tables and progress (no syntax highlighting of numbers)."""
    from rich.console import Console

    return Console(highlight=False)
