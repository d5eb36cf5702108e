"""The sliced-inference flags predict and evaluate share: ``--tiles SIZE --overlap F --full-image``."""

from __future__ import annotations

import argparse
from typing import Any


def add_tile_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tiles",
        type=int,
        default=None,
        metavar="SIZE",
        help="sliced inference: run on overlapping SIZE px tiles at native resolution and merge them (class-wise "
        "NMS), for small defects on large images (needs the extra: pip install 'defectfusion[tiles]')",
    )
    p.add_argument(
        "--overlap", type=float, default=None, metavar="F", help="with --tiles: fraction tiles share (default: 0.2)"
    )
    p.add_argument(
        "--full-image", action="store_true", help="with --tiles: also run on the whole (resized) image and merge"
    )


def tile_options(args: argparse.Namespace) -> dict[str, Any]:
    """``tiles``, ``overlap``, ``full_image`` keyword arguments; the refinements without ``--tiles`` are refused."""
    from ..errors import ConfigError

    if args.tiles is None and (args.overlap is not None or args.full_image):
        raise ConfigError("--overlap and --full-image refine --tiles SIZE; add --tiles (e.g. --tiles 256)")
    overlap = 0.2 if args.overlap is None else args.overlap
    return {"tiles": args.tiles, "overlap": overlap, "full_image": args.full_image}
