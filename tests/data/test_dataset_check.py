"""The dataset check on small synthetic splits: planted problems are each named, a clean set has none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectfusion.data.dataset_check import HARD_PX, check_dataset, load_splits, split_names

CLASSES = ["scratch", "dent", "stain"]


def texture(seed: int, width: int, height: int) -> Image.Image:
    """Distinct low-frequency content (a gradient and a few large random rectangles) so phash tells images apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    base = 128 + 100 * np.sin(4 * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6))
    img = np.repeat(base[..., None], 3, axis=2)
    for _ in range(6):
        x0, y0 = rng.integers(0, width - 16), rng.integers(0, height - 16)
        w, h = rng.integers(width // 5, width // 2), rng.integers(height // 5, height // 2)
        img[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_split(folder: Path, images: list[tuple[str, Image.Image | bytes]], anns: list[dict], classes=CLASSES) -> Path:
    """``folder/images/<name>`` plus ``folder/annotations.json``; ``anns`` entries need image index and bbox."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, (name, content) in enumerate(images):
        path = folder / "images" / name
        if isinstance(content, bytes):
            path.write_bytes(content)
            with Image.open(path) as im:
                size = im.size
        else:
            content.save(path, quality=85) if name.endswith(".jpg") else content.save(path)
            size = content.size
        records.append({"id": i + 1, "file_name": name, "width": size[0], "height": size[1]})
    annotations = [
        {"id": 100 * (folder.name == "val") + 200 * (folder.name == "test") + k + 1, "image_id": a["image"] + 1,
         "category_id": a.get("cat", 1), "bbox": a["bbox"], "area": 1.0, "iscrowd": 0}
        for k, a in enumerate(anns)
    ]  # fmt: skip
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": records, "annotations": annotations, "categories": categories}))
    return path


def clean_images(seed: int, count: int) -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(seed)
    return [(f"s{seed}_{i}.png", texture(seed * 100 + i, *rng.integers(64, 201, 2))) for i in range(count)]


def big_boxes(images: list[tuple[str, Image.Image]]) -> list[dict]:
    """Two boxes a quarter of the image per image, classes in turn: balanced, nothing tiny or outside."""
    anns = []
    for i, (_, im) in enumerate(images):
        w, h = im.size
        anns.append({"image": i, "cat": 1 + (2 * i) % 3, "bbox": [2, 2, w / 4, h / 4]})
        anns.append({"image": i, "cat": 1 + (2 * i + 1) % 3, "bbox": [w / 2, h / 2, w / 3, h / 3]})
    return anns


def build_clean(root: Path) -> list[Path]:
    train, val = clean_images(1, 6), clean_images(2, 3)
    return [write_split(root / "train", train, big_boxes(train)), write_split(root / "val", val, big_boxes(val))]


def build_planted(root: Path) -> list[Path]:
    """train / val / test with: byte copy train->test, JPEG re-encode train->val, empty class 'hole',
    a box outside its image, a degenerate box, an 8 px box at 640."""
    train = clean_images(3, 6)
    train_anns = big_boxes(train)
    w0, h0 = train[0][1].size
    train_anns.append({"image": 0, "cat": 1, "bbox": [w0 - 10, 5, 30, 10]})  # annotation 13: beyond the right edge
    train_anns.append({"image": 1, "cat": 2, "bbox": [5, 5, 0, 12]})  # annotation 14: zero width
    tiny = ("tiny.png", texture(999, 160, 160))
    train.append(tiny)
    train_anns.append({"image": 6, "cat": 3, "bbox": [40, 40, 2, 2]})  # annotation 15: 2 px of 160 -> 8 px at 640
    train_anns.append({"image": 6, "cat": 1, "bbox": [80, 80, 60, 60]})
    classes = [*CLASSES, "hole"]
    train_json = write_split(root / "train", train, train_anns, classes)

    val = [*clean_images(4, 3), ("reencoded.jpg", train[2][1])]
    val_json = write_split(root / "val", val, big_boxes(val), classes)
    copy_bytes = (root / "train" / "images" / train[3][0]).read_bytes()
    test = [*clean_images(5, 3), ("copied.png", copy_bytes)]
    test_json = write_split(root / "test", test, big_boxes(test[:3]), classes)
    return [train_json, val_json, test_json]


def test_clean_set_has_no_problems(tmp_path):
    splits = load_splits(build_clean(tmp_path))
    check = check_dataset(splits, image_size=640)
    assert check.problems == [], [p.line() for p in check.problems]
    train, val = check.splits
    assert (train.name, train.num_images, train.num_boxes, train.num_empty_images) == ("train", 6, 12, 0)
    assert train.boxes_per_class == {"scratch": 4, "dent": 4, "stain": 4}
    assert val.num_boxes == 6 and train.imbalance_ratio == pytest.approx(1.0)
    assert train.size_classes["small"] == 0 and train.share_under_hard == 0.0
    # every box is >= 1/4 of a <= 200 px image: 10th percentile at 320 px is far above 16 px
    assert check.recommended_size == 320 and not check.tiling_advised


def test_planted_problems_are_each_named(tmp_path):
    files = build_planted(tmp_path)
    check = check_dataset(load_splits(files), image_size=640)
    by_kind: dict[str, list] = {}
    for p in check.problems:
        by_kind.setdefault(p.kind, []).append(p)
    lines = "\n".join(p.line() for p in check.problems)

    (leak,) = by_kind["leak_duplicate"]
    assert leak.split == "test" and leak.file.endswith("copied.png") and "LEAKAGE train/test" in leak.message
    assert "s3_3.png" in leak.message
    (near,) = by_kind["leak_near_duplicate"]
    assert near.split == "val" and near.file.endswith("reencoded.jpg") and "s3_2.png" in near.message
    empty = by_kind["empty_class"]
    assert {(p.split, p.record) for p in empty} == {(s, "category 4 (hole)") for s in ("train", "val", "test")}
    assert all(p.file.endswith("annotations.json") for p in empty)
    (outside,) = by_kind["out_of_image"]
    assert outside.record == "annotation 13" and outside.file.endswith("s3_0.png")
    (degenerate,) = by_kind["degenerate_box"]
    assert degenerate.record == "annotation 14" and degenerate.file.endswith("s3_1.png")
    (tiny,) = by_kind["tiny_box"]
    assert tiny.record == "annotation 15" and tiny.file.endswith("tiny.png") and "8.0x8.0 px" in tiny.message
    # nothing else: the distinct textures are not near-duplicates of each other
    assert set(by_kind) == {"leak_duplicate", "leak_near_duplicate", "empty_class", "out_of_image"} | {
        "degenerate_box",
        "tiny_box",
    }, lines
    train = check.splits[0]
    assert train.boxes_per_class["hole"] == 0 and train.share_under_hard == pytest.approx(1 / 15)
    assert check.to_dict()["problem_counts"]["empty_class"] == 3


def test_within_split_duplicates_and_tiling_advice(tmp_path):
    images = clean_images(6, 3)
    images.append(("again.png", images[0][1]))  # same pixels, same PNG encoder: byte-identical
    anns = [{"image": i, "cat": 1 + i % 3, "bbox": [1, 1, 1.5, 1.5]} for i in range(4)]  # tiny at any size
    check = check_dataset(load_splits([write_split(tmp_path / "train", images, anns)]), image_size=640)
    (dup,) = [p for p in check.problems if p.kind == "duplicate"]
    assert dup.file.endswith("again.png") and "LEAKAGE" not in dup.message
    assert not [p for p in check.problems if p.kind.startswith("leak_") or p.kind == "near_duplicate"]
    assert len([p for p in check.problems if p.kind == "tiny_box"]) == 4
    assert check.tiling_advised and check.recommended_size == 1280
    assert check.p10_side_px[1280] < HARD_PX


def test_split_names_from_folders_or_stems(tmp_path):
    assert split_names([tmp_path / "train" / "annotations.json", tmp_path / "val" / "annotations.json"]) == [
        "train",
        "val",
    ]
    assert split_names([tmp_path / "train.json", tmp_path / "test.json"]) == ["train", "test"]


def test_clean_copy_of_a_split_is_leakage(tmp_path):
    files = build_clean(tmp_path / "a")
    shutil.copytree(tmp_path / "a" / "train", tmp_path / "a" / "test")
    check = check_dataset(load_splits([files[0], tmp_path / "a" / "test" / "annotations.json"]))
    leaks = [p for p in check.problems if p.kind == "leak_duplicate"]
    assert len(leaks) == 6 and all(p.split == "test" for p in leaks)


def test_large_images_advise_tiling_and_imbalance_is_flagged(tmp_path):
    wide = Image.new("RGB", (2700, 300), (90, 120, 150))  # uniform: cheap to write and hash
    anns = [{"image": 0, "cat": 1, "bbox": [10 + 100 * k, 10, 90, 200]} for k in range(20)]
    anns.append({"image": 0, "cat": 2, "bbox": [2500, 20, 150, 200]})
    anns.append({"image": 0, "cat": 3, "bbox": [2300, 20, 150, 200]})
    check = check_dataset(load_splits([write_split(tmp_path / "train", [("wide.png", wide)], anns)]))
    assert check.tiling_advised and "2700 px" in check.tiling_reason
    (imbalance,) = [p for p in check.problems if p.kind == "class_imbalance"]
    assert "20 vs 1" in imbalance.message and imbalance.file.endswith("annotations.json")


def test_no_boxes_keeps_the_requested_size(tmp_path):
    check = check_dataset(load_splits([write_split(tmp_path / "train", clean_images(7, 2), [])]), image_size=512)
    assert check.recommended_size == 512 and not check.tiling_advised
    assert check.splits[0].num_empty_images == 2
    assert {p.kind for p in check.problems} == {"empty_class"}
    json.dumps(check.to_dict(), allow_nan=False)  # strict json: no NaN for the missing percentiles


def test_long_thin_scratches_are_not_tiny_and_upscaling_small_images_says_what_it_costs(tmp_path):
    """NEU-DET's case: 200 px images whose scratches are 15 x 255 px at 320 px (thin but long). Fails if the shorter
    side decided "tiny" (every scratch would be reported) or if the advice gave no reason or cost."""
    images = [(f"g{i}.png", Image.new("RGB", (200, 200), (90 + i, 90, 90))) for i in range(12)]
    scratches = [{"image": i, "cat": 1, "bbox": [20, 10, 9.4, 160]} for i in range(10)]  # 15 x 256 px at 320
    lines = [{"image": 10, "cat": 2, "bbox": [20, 10, 1.5, 150]}]  # 2.4 px across at 320: thin, not tiny
    specks = [{"image": 11, "cat": 3, "bbox": [50 + 10 * k, 50, 6, 6]} for k in range(3)]  # 9.6 px at 320: tiny
    check = check_dataset(load_splits([write_split(tmp_path / "train", images, scratches + lines + specks)]), 320)
    kinds = [p.kind for p in check.problems if p.kind in {"tiny_box", "thin_box"}]
    assert sorted(kinds) == ["thin_box", "tiny_box", "tiny_box", "tiny_box"]
    (thin,) = [p for p in check.problems if p.kind == "thin_box"]
    assert "2.4x240.0 px" in thin.message and "detected by its length" in thin.message
    # the 10th-percentile box is a speck: a larger input is advised, with its cost, and the note that 200 px
    # images gain no detail by it
    assert check.recommended_size > 320 and "x the compute per image of 320 px" in check.tiling_reason
    assert "upscales them: no new detail" in check.tiling_reason
