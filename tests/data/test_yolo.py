"""YOLO txt -> COCO: round trips with non-integer boxes, class names from data.yaml / classes.txt, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from defectfusion.data.yolo import read_yolo, read_yolo_names, write_yolo
from defectfusion.errors import DataError
from tests.helpers import coco_from_boxes

CLASSES = ["stain", "crack", "hole"]  # the file's order, not sorted


def yolo_case(root: Path, names_file: str = "data.yaml") -> dict:
    """Three images (one background) with non-integer pixel boxes, written as a YOLO dataset."""
    sizes = [(64, 48), (40, 50), (30, 30)]
    boxes = [(1, 1, 3, 1.25, 2.5, 10.75, 7.125), (2, 1, 1, 30.3, 20.7, 12.9, 9.01), (3, 2, 2, 0.5, 1.5, 20.25, 30.4)]
    coco = coco_from_boxes(sizes, boxes, CLASSES, prefix="im")
    images = coco["images"]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for im in images:
        Image.new("RGB", (im["width"], im["height"]), (120, 100, 90)).save(root / "images" / im["file_name"])
    write_yolo(coco, root, names_file)
    return coco


def as_boxes(coco: dict) -> list[tuple[str, str, list[float]]]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    return sorted((files[a["image_id"]], names[a["category_id"]], a["bbox"]) for a in coco["annotations"])


@pytest.mark.parametrize("names_file", ["data.yaml", "classes.txt"])
def test_round_trip_keeps_boxes_and_classes(tmp_path, names_file):
    coco = yolo_case(tmp_path, names_file)
    data = read_yolo(tmp_path)
    assert [c["name"] for c in data.coco["categories"]] == CLASSES  # the names file's order
    assert [c["id"] for c in data.coco["categories"]] == [1, 2, 3]
    got, want = as_boxes(data.coco), as_boxes(coco)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g[2] == pytest.approx(w[2], abs=1e-6)
    assert data.num_background == 1  # im2: an empty label file
    assert [(im["width"], im["height"]) for im in data.coco["images"]] == [(64, 48), (40, 50), (30, 30)]
    assert all(a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3]) for a in data.coco["annotations"])


def test_names_as_a_dict_and_missing_label_files(tmp_path):
    yolo_case(tmp_path)
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  1: crack\n  0: stain\n  2: hole\n")
    (tmp_path / "labels" / "im2.txt").unlink()
    (tmp_path / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    data = read_yolo(tmp_path)
    assert [c["name"] for c in data.coco["categories"]] == ["stain", "crack", "hole"]
    assert len(data.coco["images"]) == 3 and data.unlabeled == ["im2.png"]  # kept as background
    assert data.orphan_labels == ["ghost.txt"]
    assert data.num_background == 1


def test_no_names_is_an_error(tmp_path):
    yolo_case(tmp_path)
    (tmp_path / "data.yaml").unlink()
    with pytest.raises(DataError, match=r"no class names .*data\.yaml.*classes\.txt"):
        read_yolo_names(tmp_path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0.5 0.5 0.2 0.2", r"expected 5 values 'class cx cy w h'.*got 4 .*class index looks missing"),
        ("3 0.5 0.5 0.2 0.2", r"class index 3 is not one of 0\.\.2 \(3 names in .*data\.yaml\)"),
        ("1 0.5 abc 0.2 0.2", r"is not numeric"),
        ("1 0.5 0.5 0 0.2", r"positive width and height"),
    ],
)
def test_bad_line_is_one_line_naming_file_and_line(tmp_path, line, expected):
    yolo_case(tmp_path)
    label = tmp_path / "labels" / "im0.txt"
    label.write_text(label.read_text() + "\n" + line + "\n")  # after the two good lines and a blank one: line 4
    with pytest.raises(DataError, match=expected) as err:
        read_yolo(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{label}, line 4: ") and "\n" not in message
