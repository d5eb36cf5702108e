"""`defectfusion data slice`: cut a COCO set of large images into overlapping tiles (a tiled training set)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "slice",
        help="cut large images into overlapping tiles: a tiled COCO training set for small defects",
        description="Cut every image of a COCO set into TILES x TILES px tiles at native resolution (the grid "
        "`predict --tiles` uses), written as OUT/images + OUT/annotations.json. A box cut by a tile border is "
        "clipped to the tile and kept when at least --min-visible of its area is inside, else dropped.",
    )
    p.add_argument("annotations", type=Path, metavar="ANNOTATIONS", help="COCO json of the large images")
    p.add_argument("out", type=Path, metavar="OUT", help="output folder")
    p.add_argument("--tiles", type=int, required=True, metavar="SIZE", help="tile side in pixels")
    p.add_argument(
        "--overlap", type=float, default=0.2, metavar="F", help="fraction of a tile shared with a neighbour (0.2)"
    )
    p.add_argument(
        "--min-visible",
        type=float,
        default=0.5,
        metavar="F",
        help="keep a cut box with at least this visible area fraction (0.5)",
    )
    p.add_argument(
        "--empty-fraction",
        metavar="F",
        type=float,
        default=1.0,
        help="share of tiles without boxes to keep, seeded by --seed (default: 1, all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the empty-tile draw (default: 0)")
    p.add_argument("--images", type=Path, default=None, help="images folder (default: next to ANNOTATIONS)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..commands.data_slice import slice_dataset

    s = slice_dataset(
        args.annotations,
        args.out,
        tile=args.tiles,
        overlap=args.overlap,
        min_visible=args.min_visible,
        empty_fraction=args.empty_fraction,
        seed=args.seed,
        images=args.images,
        progress=not args.quiet,
    )
    print(
        f"{s.num_source_images} images -> {s.num_tiles} tiles ({s.num_empty_tiles} without boxes before "
        f"--empty-fraction); {s.boxes_kept} boxes kept, {s.boxes_dropped} cut pieces under --min-visible dropped"
    )
    print(f"wrote {s.annotations}")
    return 0
