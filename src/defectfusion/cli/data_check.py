"""`defectfusion data check`: a dataset report (sizes, duplicates, leakage, bad boxes) to read before training."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_threads_flag

SHOWN_PROBLEMS = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="report on COCO splits: counts, box sizes at the model size, duplicates, leakage, bad boxes",
        description="Check one or more COCO annotation files (one per split, named by folder or file stem): "
        "images, boxes per class, empty images, image sizes, box sizes at the model input size with a recommended "
        "size and tiling advice, exact and near-duplicate images within and across splits (leakage), empty "
        "classes, class imbalance, degenerate and out-of-image boxes. Writes report.md, report.html, "
        "dataset_check.json and plots. Exits 0 even when problems are found: read the report.",
    )
    p.add_argument("annotations", nargs="+", type=Path, metavar="ANNOTATIONS", help="COCO json files (splits)")
    p.add_argument("--image-size", type=int, default=640, help="model input side N (plain N x N resize; 640)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <first json's folder>/data_check)")
    add_threads_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..commands.data_check import data_check

    outcome = data_check(args.annotations, image_size=args.image_size, out=args.out)
    check = outcome.check
    for s in check.splits:
        print(
            f"{s.name}: {s.num_images} images ({s.num_empty_images} empty), {s.num_boxes} boxes, "
            f"{s.share_under_hard:.1%} tiny (area under 16² px²) at {check.image_size} px"
        )
    print(f"recommended input size: {check.recommended_size} px")
    print(f"tiling: {'advised' if check.tiling_advised else 'not needed'} ({check.tiling_reason})")
    if check.problems:
        counts = ", ".join(f"{k} {v}" for k, v in check.problem_counts().items())
        print(f"{len(check.problems)} problem(s): {counts}")
        for problem in check.problems[:SHOWN_PROBLEMS]:
            print(f"  {problem.line()}")
        if len(check.problems) > SHOWN_PROBLEMS:
            print(f"  ... and {len(check.problems) - SHOWN_PROBLEMS} more in {outcome.out_dir / 'report.md'}")
    else:
        print("no problems found")
    print(f"wrote {outcome.out_dir / 'report.md'}, report.html, dataset_check.json and plots/")
    return 0
