"""`defectfusion synth`: a synthetic six-class industrial-defect dataset in COCO format."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a synthetic industrial-defect dataset (COCO) with the six classes",
        description="Procedural industrial surfaces with deep cracks, superficial scratches, holes, stains, dents "
        "and intact rivets, written as OUT/{train,val[,test]}/images + annotations.json, plus the matching "
        "descriptions.yml. Deterministic for a seed.",
    )
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--train", type=int, default=400, help="training images (default: 400)")
    p.add_argument("--val", type=int, default=100, help="validation images (default: 100)")
    p.add_argument("--test", type=int, default=0, help="test images, a third split (default: none)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--defect-scale",
        choices=["normal", "small"],
        default="normal",
        help="normal: objects sized relative to the image; small: several 12-48 px defects per image whatever "
        "its size (e.g. with --size 2048, for tiled training and sliced inference) (default: normal)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..commands.synth import synth

    summary = synth(
        args.out,
        train=args.train,
        val=args.val,
        test=args.test,
        size=args.size,
        seed=args.seed,
        defect_scale=args.defect_scale,
        progress=True,
    )
    for name, split in summary.splits.items():
        counts = ", ".join(f"{k} {v}" for k, v in split.instances.items())
        print(f"{name}: {split.num_images} images ({split.num_empty_images} without objects): {counts}")
    print(f"wrote {summary.root} (descriptions: {summary.descriptions})")
    return 0
