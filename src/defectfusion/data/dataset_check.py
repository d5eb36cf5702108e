"""The dataset check run before training: statistics and problems of one or more COCO splits.

:func:`check_dataset` takes loaded splits (a :class:`~.coco.CocoIndex` plus the raw json of each)
and returns a :class:`DatasetCheck`: per-split statistics, a recommended model input size with
tiling advice, and a flat list of :class:`Problem` records, each naming a file and a record.
It writes nothing; :mod:`defectfusion.report.dataset_report` turns the result into a report.

Box sizes are measured *at the model's input size*: a box ``w x h`` in an image ``W x H`` is
``w * N / W`` by ``h * N / H`` after the plain resize to ``N x N``. COCO size classes apply to
that resized area (small < 32², medium < 96², large otherwise). A box's *side* is the square
root of its area there (a 15 x 255 px scratch has side 62: long thin objects are found by their
length, so the shorter side alone would call them tiny): a box is ``tiny`` when its side is
under :data:`HARD_PX` (area under 16², a quarter of COCO's small), and ``thin`` (a note, not a
problem) when its shorter side is under :data:`THIN_PX` while its area is not tiny.

Recommended input size: the smallest of :data:`CANDIDATE_SIZES` at which the 10th percentile of
the box side (at that size, all splits together) is at least :data:`HARD_PX` pixels; the largest
candidate if none reaches it. The advice gives its cost (compute per image grows as the square
of the input side) and says when a size beyond the images' own resolution adds no detail. Tiling
is advised when, at the largest candidate, more than :data:`TILING_SHARE` of the boxes stay
under :data:`HARD_PX` px, or when the median image's longer side is over twice the largest
candidate (a plain resize throws most pixels away).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .coco import CocoIndex, CocoWarning, load_coco

HARD_PX = 16  # box side (square root of its area, px at the model size) under which detection gets hard
THIN_PX = 4  # shorter side under which a box that is not tiny is noted as thin
SMALL_AREA, MEDIUM_AREA = 32**2, 96**2  # COCO size classes, at the model size
CANDIDATE_SIZES = (320, 416, 512, 640, 800, 960, 1024, 1280)
TILING_SHARE = 0.10
NEAR_DUPLICATE_BITS = 6  # phash Hamming distance (of 64 bits) at or under which two images are near-duplicates
IMBALANCE_RATIO = 20.0  # most / least frequent class (non-zero) at or above which a split is flagged

#: Problem kinds, in report order, with what they mean.
PROBLEM_KINDS = {
    "leak_duplicate": "byte-identical image in two splits (evaluation leakage)",
    "leak_near_duplicate": "visually near-identical image in two splits (evaluation leakage)",
    "duplicate": "byte-identical image twice in one split",
    "near_duplicate": "visually near-identical images in one split",
    "unreadable_image": "image file that cannot be decoded",
    "empty_class": "category with no boxes in a split",
    "class_imbalance": f"most / least frequent class >= {IMBALANCE_RATIO:g}x",
    "degenerate_box": "box with width or height under 1 px",
    "out_of_image": "box reaching beyond its image",
    "tiny_box": f"box of area under {HARD_PX}² px² at the model input size",
    "thin_box": f"box under {THIN_PX} px across but long enough not to be tiny (a note: found by its length)",
}


@dataclass(frozen=True)
class Problem:
    """One finding: ``kind`` (a key of :data:`PROBLEM_KINDS`), the file and the record it is about."""

    kind: str
    split: str
    file: str  # image file, or the annotations json for class-level problems
    record: str  # "image 12 (a.png)", "annotation 7", "category 3 (scratch)"
    message: str

    def line(self) -> str:
        return f"[{self.kind}] {self.file}: {self.record}: {self.message}"


@dataclass
class SplitStats:
    """Statistics of one split. Lists hold one value per image / per (non-crowd) box."""

    name: str
    annotations_file: str
    num_images: int
    num_boxes: int
    num_empty_images: int
    boxes_per_class: dict[str, int]
    imbalance_ratio: float | None  # most / least frequent class among classes with boxes
    image_widths: list[int] = field(default_factory=list)
    image_heights: list[int] = field(default_factory=list)
    box_side_px: list[float] = field(default_factory=list)  # square root of the area at the model size
    size_classes: dict[str, int] = field(default_factory=dict)  # small / medium / large at the model size
    share_under_hard: float = 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (the per-image / per-box lists reduced to quantiles)."""
        aspect = [w / h for w, h in zip(self.image_widths, self.image_heights, strict=True)]
        return {
            "name": self.name,
            "annotations_file": self.annotations_file,
            "num_images": self.num_images,
            "num_boxes": self.num_boxes,
            "num_empty_images": self.num_empty_images,
            "boxes_per_class": self.boxes_per_class,
            "imbalance_ratio": self.imbalance_ratio,
            "image_width": _quantiles(self.image_widths),
            "image_height": _quantiles(self.image_heights),
            "aspect_ratio": _quantiles(aspect),
            "box_side_at_model_size": _quantiles(self.box_side_px),  # square root of the area
            "size_classes_at_model_size": self.size_classes,
            "share_under_16px": self.share_under_hard,
        }


@dataclass
class DatasetCheck:
    """Result of :func:`check_dataset`."""

    image_size: int
    splits: list[SplitStats]
    class_names: list[str]
    recommended_size: int
    p10_side_px: dict[int, float | None]  # candidate size -> 10th-percentile box side (sqrt of area) there
    tiling_advised: bool
    tiling_reason: str
    problems: list[Problem]

    def problem_counts(self) -> dict[str, int]:
        counts = Counter(p.kind for p in self.problems)
        return {k: counts[k] for k in PROBLEM_KINDS if counts[k]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "class_names": self.class_names,
            "recommended_size": self.recommended_size,
            "p10_box_side_px": {str(k): v for k, v in self.p10_side_px.items()},
            "tiling_advised": self.tiling_advised,
            "tiling_reason": self.tiling_reason,
            "rule": {
                "hard_px": HARD_PX,
                "candidate_sizes": list(CANDIDATE_SIZES),
                "tiling_share": TILING_SHARE,
                "near_duplicate_bits": NEAR_DUPLICATE_BITS,
                "imbalance_ratio": IMBALANCE_RATIO,
            },
            "splits": [s.summary() for s in self.splits],
            "problem_counts": self.problem_counts(),
            "problems": [p.__dict__ for p in self.problems],
        }


@dataclass
class LoadedSplit:
    """A split to check: its name, the validated index and the raw json (to see what loading cleaned)."""

    name: str
    index: CocoIndex
    raw: dict[str, Any]


def split_names(paths: list[Path]) -> list[str]:
    """One name per annotations file: the folder names if they differ, else the file stems."""
    folders = [p.resolve().parent.name for p in paths]
    stems = [p.stem for p in paths]
    names = folders if len(set(folders)) == len(folders) else stems
    if len(set(names)) != len(names):
        names = [f"{f}-{s}" for f, s in zip(folders, stems, strict=True)]
    return names


def load_splits(paths: list[str | Path]) -> list[LoadedSplit]:
    """Load each annotations file (load_coco's clipping warnings are silenced: the check reports them)."""
    files = [Path(p) for p in paths]
    loaded = []
    for name, path in zip(split_names(files), files, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CocoWarning)
            index = load_coco(path)
        with path.open(encoding="utf-8") as f:
            raw = json.load(f)
        loaded.append(LoadedSplit(name, index, raw))
    return loaded


# --------------------------------------------------------------------------- the check


def check_dataset(splits: list[LoadedSplit], image_size: int = 640) -> DatasetCheck:
    """Statistics and problems of ``splits`` at model input size ``image_size`` (square resize)."""
    problems: list[Problem] = []
    stats: list[SplitStats] = []
    rel_side: list[float] = []  # box side as a fraction of its image's (square roots of the areas), all splits
    long_sides: list[int] = []
    for split in splits:
        s, rel = _split_stats(split, image_size, problems)
        stats.append(s)
        rel_side += rel
        long_sides += [max(r.width, r.height) for r in split.index.images]
    problems += _duplicates(splits)

    recommended, p10, tiling, reason = _size_advice(np.asarray(rel_side, dtype=np.float64), long_sides, image_size)
    order = list(PROBLEM_KINDS)
    problems.sort(key=lambda p: order.index(p.kind))
    names = list(splits[0].index.class_names) if splits else []
    return DatasetCheck(image_size, stats, names, recommended, p10, tiling, reason, problems)


def _cost(size: int, image_size: int) -> str:
    factor = (size / image_size) ** 2
    return f"about {factor:.1f}x the compute per image of {image_size} px" if size != image_size else "as checked"


def _size_advice(rel: np.ndarray, long_sides: list[int], image_size: int) -> tuple[int, dict, bool, str]:
    """Recommended size, p10 box side per candidate, tiling advice and why (the rule of the module doc).

    ``rel``: box side (square root of its area) as a fraction of its image's, ``[num_boxes]``; at
    input size ``n`` the box side is ``rel * n`` px.
    """
    if not rel.size:
        return image_size, dict.fromkeys(CANDIDATE_SIZES), False, f"no boxes to size the model by: keeping {image_size}"
    p10 = {n: float(np.percentile(rel, 10) * n) for n in CANDIDATE_SIZES}
    reaching = [n for n in CANDIDATE_SIZES if p10[n] >= HARD_PX]
    largest = CANDIDATE_SIZES[-1]
    recommended = reaching[0] if reaching else largest
    share = float(np.mean(rel * largest < HARD_PX))
    median_long = float(np.median(long_sides))
    if share > TILING_SHARE:
        why = f"even at {largest} px, {share:.0%} of the boxes are under {HARD_PX} px: train on tiles (data slice)"
        return recommended, p10, True, why
    if median_long > 2 * largest:
        why = (
            f"the median image is {median_long:.0f} px on its longer side, over twice {largest}: resizing loses detail"
        )
        return recommended, p10, True, why
    if not reaching:
        return recommended, p10, False, f"no candidate size brings the 10th-percentile box to {HARD_PX} px"
    why = (
        f"{recommended} px keeps 90% of the boxes at or above {HARD_PX} px on a side (area {HARD_PX}²), "
        f"{_cost(recommended, image_size)}"
    )
    if recommended > median_long:
        why += (
            f"; the images are {median_long:.0f} px on their longer side (median), so {recommended} px upscales them: "
            f"no new detail, only larger boxes for the detector's coarse strides; worth it only if the small defects "
            f"are missed at {image_size} px"
        )
    return recommended, p10, False, why


def _split_stats(split: LoadedSplit, n: int, problems: list[Problem]) -> tuple[SplitStats, list[float]]:
    index, name = split.index, split.name
    ann_file = str(index.annotations_file)
    files = {r.id: r for r in index.images}
    problems += _raw_box_problems(split)

    counts = dict.fromkeys(index.class_names, 0)
    side_px: list[float] = []
    rel: list[float] = []
    sizes = {"small": 0, "medium": 0, "large": 0}
    empty = 0
    for rec in index.images:
        anns = [a for a in index.annotations[rec.id] if not a.iscrowd]
        empty += not anns
        for a in anns:
            counts[index.class_names[a.label]] += 1
            x1, y1, x2, y2 = a.bbox
            w, h = (x2 - x1) * n / rec.width, (y2 - y1) * n / rec.height
            area = w * h
            side_px.append(float(np.sqrt(area)))
            rel.append(float(np.sqrt((x2 - x1) / rec.width * (y2 - y1) / rec.height)))
            sizes["small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"] += 1
            if (x2 - x1) < 1 or (y2 - y1) < 1:  # sub-pixel ones are degenerate already
                continue
            where = (name, str(rec.path), f"annotation {a.id}")
            box = f"{index.class_names[a.label]} box is {w:.1f}x{h:.1f} px at {n}x{n}"
            if area < HARD_PX**2:
                problems.append(Problem("tiny_box", *where, f"{box} (area under {HARD_PX}²: hard to detect)"))
            elif min(w, h) < THIN_PX:
                problems.append(Problem("thin_box", *where, f"{box}: thin but long (detected by its length)"))
    for label, cname in enumerate(index.class_names):
        if counts[cname] == 0:
            cid = index.label_to_category_id[label]
            problems.append(
                Problem(
                    "empty_class",
                    name,
                    ann_file,
                    f"category {cid} ({cname})",
                    f"has 0 boxes in split {name}: the model cannot learn or be scored on it",
                )
            )
    nonzero = [c for c in counts.values() if c > 0]
    ratio = max(nonzero) / min(nonzero) if nonzero else None
    if ratio is not None and ratio >= IMBALANCE_RATIO:
        most = max(counts, key=counts.__getitem__)
        least = min((c for c in counts if counts[c] > 0), key=counts.__getitem__)
        problems.append(
            Problem(
                "class_imbalance",
                name,
                ann_file,
                f"categories {most} / {least}",
                f"{counts[most]} vs {counts[least]} boxes ({ratio:.0f}x); "
                f"consider class-balanced sampling or more data",
            )
        )
    stats = SplitStats(
        name=name,
        annotations_file=ann_file,
        num_images=len(index.images),
        num_boxes=sum(counts.values()),
        num_empty_images=empty,
        boxes_per_class=counts,
        imbalance_ratio=ratio,
        image_widths=[files[i].width for i in files],
        image_heights=[files[i].height for i in files],
        box_side_px=side_px,
        size_classes=sizes,
        share_under_hard=float(np.mean(np.asarray(side_px) < HARD_PX)) if side_px else 0.0,
    )
    return stats, rel


def _raw_box_problems(split: LoadedSplit) -> list[Problem]:
    """Degenerate and out-of-image boxes as written in the json (load_coco drops or clips them)."""
    index = split.index
    records = {r.id: r for r in index.images}
    found = []
    for i, a in enumerate(split.raw.get("annotations", [])):
        rec = records.get(a.get("image_id"))
        bbox = a.get("bbox")
        if rec is None or not isinstance(bbox, list) or len(bbox) != 4:
            continue  # load_coco has already rejected such files
        x, y, w, h = (float(v) for v in bbox)
        who = f"annotation {a['id']}" if "id" in a else f"annotations[{i}]"
        if not (w >= 1 and h >= 1):
            found.append(
                Problem(
                    "degenerate_box",
                    split.name,
                    str(rec.path),
                    who,
                    f"bbox [x, y, w, h] = {bbox} has a width or height under 1 px (dropped or useless in training)",
                )
            )
        tol = 0.5  # rounding of exported coordinates
        if w > 0 and h > 0 and (x < -tol or y < -tol or x + w > rec.width + tol or y + h > rec.height + tol):
            found.append(
                Problem(
                    "out_of_image",
                    split.name,
                    str(rec.path),
                    who,
                    f"bbox [x, y, w, h] = {bbox} reaches beyond the {rec.width}x{rec.height} image "
                    f"(x2 = {x + w:g}, y2 = {y + h:g}); training clips it, fix the annotation",
                )
            )
    return found


def _duplicates(splits: list[LoadedSplit]) -> list[Problem]:
    """Exact (sha256 of the file) and near (phash) duplicates, within and across splits."""
    import imagehash
    from PIL import Image

    entries: list[tuple[str, Any]] = []  # (split, image record)
    digests: list[str] = []
    bits: list[np.ndarray] = []
    problems: list[Problem] = []
    for split in splits:
        for rec in split.index.images:
            data = rec.path.read_bytes()
            try:
                with Image.open(io.BytesIO(data)) as im:
                    phash = imagehash.phash(im.convert("RGB")).hash.reshape(-1)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                problems.append(
                    Problem("unreadable_image", split.name, str(rec.path), f"image {rec.id}", f"cannot be decoded: {e}")
                )
                continue
            entries.append((split.name, rec))
            digests.append(hashlib.sha256(data).hexdigest())
            bits.append(phash)

    def pair(i: int, j: int, near: bool, distance: int = 0) -> Problem:
        (si, ri), (sj, rj) = entries[i], entries[j]
        leak = si != sj
        kind = ("leak_" if leak else "") + ("near_duplicate" if near else "duplicate")
        how = f"near-identical (phash distance {distance}) to" if near else "byte-identical to"
        prefix = f"LEAKAGE {si}/{sj}: " if leak else ""
        return Problem(kind, sj, str(rj.path), f"image {rj.id} ({rj.file_name})", f"{prefix}{how} {ri.path}")

    first: dict[str, int] = {}
    for j, d in enumerate(digests):
        if d in first:
            problems.append(pair(first[d], j, near=False))
        else:
            first[d] = j
    if len(bits) > 1:
        h = np.stack(bits).astype(np.float32)  # [N, 64]
        for start in range(0, len(h), 1024):  # Hamming distances, a block of rows at a time
            block = h[start : start + 1024]
            dist = block @ (1 - h).T + (1 - block) @ h.T
            for bi, j in zip(*np.nonzero(dist <= NEAR_DUPLICATE_BITS), strict=True):
                i = start + int(bi)
                if i < j and digests[i] != digests[j]:
                    problems.append(pair(i, int(j), near=True, distance=int(round(dist[bi, j]))))
    return problems


def _quantiles(values: list[float] | list[int]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    q = np.percentile(a, [0, 10, 50, 90, 100])
    return dict(zip(("min", "p10", "median", "p90", "max"), (round(float(v), 2) for v in q), strict=True))
