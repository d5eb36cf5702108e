"""A deterministic, class-stratified train / val / test split of a COCO dataset.

Each image is grouped by its rarest class (the class found in the fewest images; images without
annotations form their own group). Every group is shuffled with the seed and cut by the
fractions, the remainders going to the split furthest below its overall target so the totals stay
close to the fractions. A repair pass then moves single images so that every class found in at
least three images is in every split (with a non-zero fraction). The same seed gives the same
split on any machine (``random.Random`` seeded with a string is not affected by hash seeds).
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io import atomic_write_json
from .coco import load_coco
from .coco_schema import read_coco_json

__all__ = [
    "SPLIT_NAMES",
    "SplitSummary",
    "check_fractions",
    "link_images",
    "split_assignment",
    "split_coco",
    "write_split",
]

SPLIT_NAMES = ("train", "val", "test")
MIN_IMAGES_EVERYWHERE = 3  # a class in this many images is put in every split


@dataclass
class SplitSummary:
    """What :func:`write_split` wrote: per split its annotations file, image and box counts."""

    files: dict[str, Path]
    num_images: dict[str, int]
    num_annotations: dict[str, int]
    classes_missing: dict[str, list[str]]  # split -> classes with >= 3 images that could not be placed there


def check_fractions(fractions: list[float] | tuple[float, ...]) -> list[float]:
    """2 or 3 non-negative fractions summing to 1 (within 1e-6); else a :class:`DataError`."""
    fr = [float(f) for f in fractions]
    if not 2 <= len(fr) <= 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
        raise DataError(
            f"split fractions {list(fractions)} are invalid; expected 2 or 3 non-negative numbers (train val [test]) "
            f"summing to 1, e.g. 0.7 0.15 0.15"
        )
    if fr[0] <= 0:
        raise DataError(f"split fractions {list(fractions)} give the train split nothing; give train a fraction > 0")
    return fr


def split_assignment(
    image_classes: dict[int, set[int]], fractions: list[float], seed: int = 0
) -> tuple[dict[int, int], dict[int, int]]:
    """Split index (0 = train, 1 = val, 2 = test) of every image.

    Args:
        image_classes: image id -> the category ids in it (empty for background images).
        fractions: one fraction per split, summing to 1.
        seed: shuffling seed.

    Returns:
        ``(assignment, class_counts)``: image id -> split index, and category id -> number of images.
    """
    fractions = check_fractions(fractions)
    counts = Counter(c for classes in image_classes.values() for c in classes)
    groups: dict[int | None, list[int]] = {}
    for image_id in sorted(image_classes):
        classes = image_classes[image_id]
        key = min(classes, key=lambda c: (counts[c], c)) if classes else None
        groups.setdefault(key, []).append(image_id)

    k = len(fractions)
    assigned = [0] * k
    total = 0
    assignment: dict[int, int] = {}
    order: dict[int, int] = {}  # image id -> position in its shuffled group, for deterministic repairs
    for key in sorted(groups, key=lambda g: (g is None, g if g is not None else 0)):
        ids = groups[key]
        random.Random(f"{seed}/{key}").shuffle(ids)
        order.update({image_id: i for i, image_id in enumerate(ids)})
        n = len(ids)
        total += n
        take = [math.floor(f * n) for f in fractions]
        for _ in range(n - sum(take)):  # remainders: to the split furthest below its overall target
            deficit = [
                fractions[j] * total - assigned[j] - take[j] if fractions[j] > 0 else -math.inf for j in range(k)
            ]
            take[max(range(k), key=lambda j: (deficit[j], -j))] += 1
        start = 0
        for j in range(k):
            for image_id in ids[start : start + take[j]]:
                assignment[image_id] = j
            start += take[j]
            assigned[j] += take[j]
    _repair(assignment, image_classes, counts, fractions, order)
    return assignment, dict(counts)


def _repair(
    assignment: dict[int, int],
    image_classes: dict[int, set[int]],
    counts: Counter,
    fractions: list[float],
    order: dict[int, int],
) -> None:
    """Move single images so every class in >= 3 images reaches every split with a fraction > 0."""
    per_split: dict[tuple[int, int], int] = Counter(
        (assignment[i], c) for i, classes in image_classes.items() for c in classes
    )
    protected = {c for c, n in counts.items() if n >= MIN_IMAGES_EVERYWHERE}
    targets = [j for j, f in enumerate(fractions) if f > 0]
    for c in sorted(protected, key=lambda c: (counts[c], c)):
        for s in targets:
            if per_split[s, c]:
                continue
            candidates = sorted(
                (i for i, classes in image_classes.items() if c in classes and per_split[assignment[i], c] >= 2),
                key=lambda i: (-per_split[assignment[i], c], len(image_classes[i]), order[i], i),
            )
            # moving an image must not empty another protected class from the split it leaves
            chosen = next(
                (
                    i
                    for i in candidates
                    if all(per_split[assignment[i], d] >= 2 for d in image_classes[i] if d in protected and d != c)
                ),
                None,
            )
            if chosen is None:
                continue  # reported as missing by the caller
            t = assignment[chosen]
            for d in image_classes[chosen]:
                per_split[t, d] -= 1
                per_split[s, d] += 1
            assignment[chosen] = s


def split_coco(coco: dict[str, Any], fractions: list[float], seed: int = 0) -> dict[str, dict[str, Any]]:
    """The COCO dict cut into ``{"train": ..., "val": ..., ["test": ...]}`` (same categories in each)."""
    fractions = check_fractions(fractions)
    assignment, _ = split_assignment(_classes_per_image(coco), fractions, seed)
    extra = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    out = {}
    for j, name in enumerate(SPLIT_NAMES[: len(fractions)]):
        ids = {i for i, s in assignment.items() if s == j}
        out[name] = {
            **extra,
            "images": [im for im in coco["images"] if im["id"] in ids],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids],
            "categories": coco["categories"],
        }
    return out


def link_images(images_dir: Path, folder: Path) -> None:
    """Make ``folder/images`` a (relative when possible) link to ``images_dir``, so that the
    ``file_name``\\ s of a split's json resolve the way :func:`load_coco` looks for them."""
    link = folder / "images"
    target = images_dir.resolve()
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        if link.resolve() == target:
            return
        raise DataError(f"{link} already exists and is not a link; remove it or choose another output folder")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(os.path.relpath(target, folder.resolve()), target_is_directory=True)
    except ValueError:  # another drive (Windows): no relative path
        link.symlink_to(target, target_is_directory=True)


def write_split(
    annotations: str | Path, out: str | Path, fractions: list[float], seed: int = 0, images: str | Path | None = None
) -> SplitSummary:
    """Split a COCO annotations file into ``out/{train,val,test}/annotations.json``.

    Each split folder gets an ``images`` link to the source images folder, so every split loads
    back with ``load_coco(out/<split>/annotations.json)``. The source is validated with
    :func:`load_coco` first.
    """
    fractions = check_fractions(fractions)
    index = load_coco(annotations, images)
    coco = read_coco_json(Path(annotations))
    splits = split_coco(coco, fractions, seed)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    counts = Counter(c for im_classes in _classes_per_image(coco).values() for c in im_classes)
    out = Path(out)
    source = Path(annotations).resolve()
    if any((out / name / "annotations.json").resolve() == source for name in splits):
        raise DataError(f"splitting {annotations} into {out} would overwrite it; choose another output folder")
    files, missing = {}, {}
    for j, (name, part) in enumerate(splits.items()):
        folder = out / name
        link_images(index.images_dir, folder)
        atomic_write_json(folder / "annotations.json", part)
        files[name] = folder / "annotations.json"
        present = {a["category_id"] for a in part["annotations"] if not a.get("iscrowd")}
        missing[name] = [
            names[c] for c in names if fractions[j] > 0 and counts[c] >= MIN_IMAGES_EVERYWHERE and c not in present
        ]
    return SplitSummary(
        files=files,
        num_images={k: len(v["images"]) for k, v in splits.items()},
        num_annotations={k: len(v["annotations"]) for k, v in splits.items()},
        classes_missing=missing,
    )


def _classes_per_image(coco: dict[str, Any]) -> dict[int, set[int]]:
    result: dict[int, set[int]] = {im["id"]: set() for im in coco["images"]}
    for a in coco["annotations"]:
        if not a.get("iscrowd"):
            result[a["image_id"]].add(a["category_id"])
    return result
