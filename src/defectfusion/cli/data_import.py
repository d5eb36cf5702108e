"""`defectfusion data import` and `data split`: VOC / YOLO to COCO, and a stratified train/val/test split."""

from __future__ import annotations

import argparse
from pathlib import Path

LISTED = 5  # file names printed before "and N more"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="convert a Pascal VOC (XML) or YOLO (txt) dataset to COCO",
        description="Read a Pascal VOC dataset (XML files in Annotations/ or anywhere; each image found by its name "
        "anywhere under SRC or --images: JPEGImages/, IMAGES/, per-class folders, beside the XML) or a YOLO "
        "dataset (images/ + labels/*.txt, names in data.yaml or classes.txt) and write OUT/images (links to the "
        "source images, or copies) and OUT/annotations.json. VOC's 1-based pixel boxes become 0-based as in "
        "detectron2 (xmin - 1, ymin - 1). With --split, also writes OUT/{train,val,test}/annotations.json.",
    )
    p.add_argument("format", choices=["voc", "yolo"], help="the source format")
    p.add_argument("src", type=Path, help="the source dataset folder")
    p.add_argument("out", type=Path, help="output folder (outside SRC)")
    p.add_argument(
        "--classes",
        type=Path,
        default=None,
        metavar="FILE",
        help="class names, one per line, in category order (VOC default: sorted names; YOLO: data.yaml/classes.txt)",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="DIR",
        help="VOC: the folder that holds the images, searched by file name (default: anywhere under SRC)",
    )
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    p.add_argument(
        "--split", type=float, nargs="+", default=None, metavar="F", help="also split: fractions, e.g. 0.7 0.15 0.15"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --split (default: 0)")
    p.set_defaults(handler=run_import)

    s = sub.add_parser(
        "split",
        help="split a COCO dataset into train/val/test, stratified by class, deterministic for a seed",
        description="Group images by their rarest class (background images apart), shuffle each group with the seed "
        "and cut it by the fractions; every class in at least 3 images reaches every split. Writes "
        "OUT/{train,val,test}/annotations.json, each with an images link to the source images.",
    )
    s.add_argument("annotations", type=Path, help="the COCO annotations json to split")
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument(
        "--fractions", type=float, nargs="+", default=[0.7, 0.15, 0.15], metavar="F", help="default: 0.7 0.15 0.15"
    )
    s.add_argument("--seed", type=int, default=0, help="shuffling seed (default: 0)")
    s.add_argument("--images", type=Path, default=None, help="images folder (default: beside the json)")
    s.set_defaults(handler=run_split)


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def _print_split(split) -> None:
    for name, path in split.files.items():
        line = f"{name}: {split.num_images[name]} images, {split.num_annotations[name]} boxes ({path})"
        if split.classes_missing[name]:
            line += f"; missing classes: {', '.join(split.classes_missing[name])}"
        print(line)


def run_import(args: argparse.Namespace) -> int:
    from ..commands.data_import import import_dataset

    summary = import_dataset(
        args.format,
        args.src,
        args.out,
        classes=args.classes,
        copy=args.copy,
        split=args.split,
        seed=args.seed,
        images=args.images,
    )
    counts = ", ".join(f"{k} {v}" for k, v in summary.instances.items())
    print(f"{summary.num_images} images ({summary.num_background} without objects): {counts}")
    if summary.unlabeled:
        fate = "kept as background" if summary.fmt == "yolo" else "left out"
        print(f"{len(summary.unlabeled)} image(s) without a label file, {fate}: {_listed(summary.unlabeled)}")
    if summary.orphan_labels:
        print(f"{len(summary.orphan_labels)} label file(s) without an image, ignored: {_listed(summary.orphan_labels)}")
    how = "copied" if summary.copied else "linked"
    print(f"wrote {summary.annotations} (images {how} into {summary.images_dir})")
    if summary.split is not None:
        _print_split(summary.split)
    return 0


def run_split(args: argparse.Namespace) -> int:
    from ..commands.data_import import split_dataset

    _print_split(split_dataset(args.annotations, args.out, args.fractions, seed=args.seed, images=args.images))
    return 0
