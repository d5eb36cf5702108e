"""The class-stratified split: deterministic, disjoint, every class (in >= 3 images) in every split, loads back."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from defectfusion.data.coco import load_coco
from defectfusion.data.split import split_assignment, split_coco, write_split
from defectfusion.errors import DataError

FRACTIONS = [0.7, 0.15, 0.15]


def skewed_coco(seed: int = 0, images: int = 80) -> dict:
    """Five classes of very different frequencies, co-occurring, plus background images."""
    rng = random.Random(seed)
    weights = {1: 0.6, 2: 0.3, 3: 0.12, 4: 0.06, 5: 0.0}
    coco = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 6)]}
    for i in range(1, images + 1):
        coco["images"].append({"id": i, "file_name": f"{i:03d}.png", "width": 16, "height": 16})
        classes = [c for c, p in weights.items() if rng.random() < p]
        if i in (5, 17, 40):  # c5: in exactly 3 images, always beside a more common class
            classes += [5, 1]
        for c in classes:
            coco["annotations"].append(
                {"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": c, "bbox": [1, 1, 4, 4]}
            )
    return coco


def classes_per_split(parts: dict) -> dict[str, set[int]]:
    return {name: {a["category_id"] for a in part["annotations"]} for name, part in parts.items()}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_is_disjoint_stratified_and_close_to_the_fractions(seed):
    coco = skewed_coco(seed)
    parts = split_coco(coco, FRACTIONS, seed=seed)
    ids = {name: {im["id"] for im in part["images"]} for name, part in parts.items()}
    assert set(parts) == {"train", "val", "test"}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] == {im["id"] for im in coco["images"]}
    images_of = Counter(c for c in {(a["image_id"], a["category_id"]) for a in coco["annotations"]})
    per_class = Counter(c for _, c in images_of)
    common = {c for c, n in per_class.items() if n >= 3}
    assert 5 in common
    for name, present in classes_per_split(parts).items():
        assert common <= present, (name, common - present)
    for name, fraction in zip(parts, FRACTIONS, strict=True):
        assert abs(len(ids[name]) - fraction * len(coco["images"])) <= 4
    for part in parts.values():  # annotations follow their image
        kept = {im["id"] for im in part["images"]}
        assert all(a["image_id"] in kept for a in part["annotations"])
        assert part["categories"] == coco["categories"]


def test_same_seed_same_split_other_seed_other_split():
    image_classes = {im["id"]: set() for im in skewed_coco()["images"]}
    for a in skewed_coco()["annotations"]:
        image_classes[a["image_id"]].add(a["category_id"])
    first, _ = split_assignment(image_classes, FRACTIONS, seed=7)
    again, _ = split_assignment({k: set(v) for k, v in reversed(image_classes.items())}, FRACTIONS, seed=7)
    other, _ = split_assignment(image_classes, FRACTIONS, seed=8)
    assert first == again
    assert first != other


def test_background_images_are_spread_too():
    coco = skewed_coco(0)
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] > 20]  # 1..20: background
    parts = split_coco(coco, FRACTIONS, seed=0)
    background = {name: sum(1 for im in part["images"] if im["id"] <= 20) for name, part in parts.items()}
    # their own group, cut by the fractions (a remainder may go to the split furthest below its overall target)
    for name, fraction in zip(parts, FRACTIONS, strict=True):
        assert abs(background[name] - fraction * 20) <= 1.5, background


@pytest.mark.parametrize("fractions", [[0.7, 0.2], [0.5, 0.6, 0.1], [1.0], [0.0, 0.5, 0.5], [0.7, -0.1, 0.4]])
def test_bad_fractions_say_what_is_expected(fractions):
    with pytest.raises(DataError, match="fraction"):
        split_coco(skewed_coco(), fractions)


def test_write_split_loads_back_with_load_coco(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    coco = skewed_coco(0, images=30)
    for im in coco["images"]:
        Image.new("RGB", (16, 16)).save(src / "images" / im["file_name"])
    (src / "annotations.json").write_text(json.dumps(coco))
    out = tmp_path / "splits"
    summary = write_split(src / "annotations.json", out, FRACTIONS, seed=0)
    assert set(summary.files) == {"train", "val", "test"}
    total = 0
    for name, path in summary.files.items():
        assert path == out / name / "annotations.json"
        index = load_coco(path)
        assert len(index) == summary.num_images[name] > 0
        assert all(Path(rec.path).is_file() for rec in index.images)
        total += len(index)
    assert total == 30
    first = {name: path.read_bytes() for name, path in summary.files.items()}
    write_split(src / "annotations.json", out, FRACTIONS, seed=0)  # again, over the old one
    assert {name: path.read_bytes() for name, path in summary.files.items()} == first
    with pytest.raises(DataError, match="would overwrite it"):
        write_split(out / "train" / "annotations.json", out, FRACTIONS)
