"""`defectfusion data ...`: dataset tools run before training (check, import, split, slice)."""

from __future__ import annotations

import argparse
import importlib

# Action modules of this package, in the order `data --help` lists them; each has register(subparsers).
ACTIONS = ["data_check", "data_import", "data_slice"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="check a dataset, import VOC / YOLO, split, slice large images into tiles",
        description="Dataset tools to run before training.",
    )
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    for name in ACTIONS:
        importlib.import_module(f"{__package__}.{name}").register(actions)
