"""`defectfusion convert`: an original DEIMv2 checkpoint + YAML -> a detector folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import console_out

_SOURCES = (
    ("config", "read from the YAML"),
    ("weights", "inferred from the weights"),
    ("default", "defaulted (the original code's defaults)"),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint of the original DEIMv2 code (.pth + YAML) into a detector folder",
        description="Read a checkpoint written by the original DEIMv2 code (weights only, nothing is executed) and the "
        "YAML it was trained with, and write a folder (config.json + model.safetensors) that computes the same "
        "outputs. Architecture values missing from the YAML are taken from the tensor shapes where they tell.",
    )
    p.add_argument("checkpoint", type=Path, help="the original checkpoint, e.g. best_stg1.pth")
    p.add_argument(
        "--config", required=True, type=Path, help="the original YAML config ('__include__' files are followed)"
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write the converted model to")
    p.add_argument(
        "--weights",
        choices=("ema", "model"),
        default=None,
        help="which weights to take (default: ema when the file has them, as the original evaluation does)",
    )
    names = p.add_mutually_exclusive_group()
    names.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="COCO json of the training data: class names from its categories (ids 0..C-1 = channels)",
    )
    names.add_argument("--class-names", default=None, help="comma-separated class names in channel order")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..commands.convert import convert_original

    class_names = args.class_names.split(",") if args.class_names is not None else None
    result = convert_original(
        args.checkpoint,
        args.config,
        args.out,
        weights=args.weights,
        class_names=class_names,
        annotations=args.annotations,
    )
    print_summary(result)
    return 0


def print_summary(result) -> None:
    """What was read, inferred and defaulted; what was checked; where the model went."""
    from rich.table import Table

    console = console_out()
    for source, title in _SOURCES:
        items = result.settings.by_source(source)
        if not items:
            continue
        table = Table(title=f"{title} ({len(items)})", title_justify="left")
        table.add_column("setting", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("how", style="dim")
        for item in items:
            table.add_row(item.key, str(item.value), item.note)
        console.print(table)
    ckpt = result.checkpoint
    details = ", ".join(f"{k} {v}" for k, v in ckpt.info.items())
    console.print(
        f"weights: {ckpt.weights} of {ckpt.path} (available: {', '.join(ckpt.available)})"
        + (f"; {details}" if details else "")
    )
    for line in result.verified:
        console.print(f"verified: {line}")
    for line in result.filled:
        console.print(f"no-op in the original: {line}")
    meta = result.model.meta
    console.print(f"classes ({len(result.class_names)}): {', '.join(result.class_names)}")
    console.print(
        f"input: {meta.image_size[0]}x{meta.image_size[1]} (H x W), mean {list(meta.image_mean)}, "
        f"std {list(meta.image_std)}; {result.num_parameters / 1e6:.2f} M parameters"
    )
    if result.out is not None:
        console.print(f"wrote {result.out}")
