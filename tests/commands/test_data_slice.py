"""`data slice`: tiles of large images, cut boxes kept or dropped by their visible fraction, in tile pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from defectfusion.commands.data_slice import cut_boxes, slice_dataset
from defectfusion.data.coco import load_coco
from tests.helpers import one_line_error, run_cli

# xyxy in a 256 x 128 image cut into two 128 px tiles: A inside the left tile, B across the border
# (28 of its 50 px on the left, 22 on the right), C inside the right tile
A, B, C = [10, 10, 40, 40], [100, 50, 150, 70], [200, 90, 220, 110]


@pytest.fixture()
def large(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)
    (tmp_path / "src" / "images").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "src" / "images" / "big.png")
    anns = [
        {"id": k + 1, "image_id": 5, "category_id": cat, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
         "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0}
        for k, (b, cat) in enumerate([(A, 3), (B, 7), (C, 3)])
    ]  # fmt: skip
    coco = {
        "images": [{"id": 5, "file_name": "big.png", "width": 256, "height": 128}],
        "annotations": anns,
        "categories": [{"id": 3, "name": "hole"}, {"id": 7, "name": "crack"}],
    }
    path = tmp_path / "src" / "annotations.json"
    path.write_text(json.dumps(coco))
    return path, pixels


def boxes_by_tile(out):
    data = json.loads((out / "annotations.json").read_text())
    by_id = {im["id"]: im for im in data["images"]}
    found = {}
    for a in data["annotations"]:
        im = by_id[a["image_id"]]
        found.setdefault(im["tile_x"], []).append((a["category_id"], a["bbox"]))
    return data, found


def test_cut_boxes_keep_by_visible_fraction_in_tile_pixels():
    boxes = np.array([A, B, C], dtype=float)
    kept, clipped, cut = cut_boxes(boxes, (0, 0, 128, 128), 0.5)
    assert kept.tolist() == [True, True, False] and cut.tolist() == [False, False, False]
    np.testing.assert_allclose(clipped, [A, [100, 50, 128, 70]])
    kept, clipped, cut = cut_boxes(boxes, (128, 0, 256, 128), 0.5)
    assert kept.tolist() == [False, False, True] and cut.tolist() == [False, True, False]
    np.testing.assert_allclose(clipped, [[72, 90, 92, 110]])
    kept, _, cut = cut_boxes(boxes, (0, 0, 128, 128), 0.6)  # 28 / 50 visible: under 0.6
    assert kept.tolist() == [True, False, False] and cut.tolist() == [False, True, False]


def test_slice_writes_tiles_and_boxes_in_tile_coordinates(large, tmp_path):
    annotations, pixels = large
    out = tmp_path / "tiles"
    summary = slice_dataset(annotations, out, tile=128, overlap=0.0, min_visible=0.5, progress=False)
    assert (summary.num_tiles, summary.boxes_kept, summary.boxes_dropped) == (2, 3, 1)
    data, found = boxes_by_tile(out)
    assert found[0] == [(3, [10.0, 10.0, 30.0, 30.0]), (7, [100.0, 50.0, 28.0, 20.0])]
    assert found[128] == [(3, [72.0, 90.0, 20.0, 20.0])]
    assert [c["name"] for c in data["categories"]] == ["hole", "crack"]
    for im in data["images"]:
        assert im["source_image_id"] == 5 and (im["width"], im["height"]) == (128, 128)
        tile = np.asarray(Image.open(out / "images" / im["file_name"]))
        np.testing.assert_array_equal(tile, pixels[:, im["tile_x"] : im["tile_x"] + 128])
    index = load_coco(out / "annotations.json")  # a valid training set as it stands
    assert len(index) == 2 and sum(len(v) for v in index.annotations.values()) == 3


def test_slicing_again_into_the_folder_leaves_only_the_new_tiles(large, tmp_path):
    annotations, _ = large
    out = tmp_path / "tiles"
    slice_dataset(annotations, out, tile=64, overlap=0.0, min_visible=0.5, progress=False)
    slice_dataset(annotations, out, tile=128, overlap=0.0, min_visible=0.5, progress=False)
    listed = {im["file_name"] for im in json.loads((out / "annotations.json").read_text())["images"]}
    assert {p.name for p in (out / "images").iterdir()} == listed


def test_slice_cli_drops_the_cut_box_under_min_visible_and_empty_tiles(large, tmp_path, capsys):
    annotations, _ = large
    out = tmp_path / "tiles"
    code, printed, _ = run_cli(
        ["data", "slice", annotations, out, "--tiles", 128, "--overlap", 0, "--min-visible", 0.6, "--quiet"], capsys
    )
    assert code == 0 and "2 boxes kept, 2 cut pieces" in printed  # B is under 0.6 on both sides
    _, found = boxes_by_tile(out)
    assert found == {0: [(3, [10.0, 10.0, 30.0, 30.0])], 128: [(3, [72.0, 90.0, 20.0, 20.0])]}

    blank = tmp_path / "blank.json"
    coco = json.loads(annotations.read_text())
    blank.write_text(json.dumps({**coco, "annotations": []}))
    summary = slice_dataset(
        blank, tmp_path / "none", tile=128, overlap=0.0, empty_fraction=0.0, images=annotations.parent / "images"
    )
    assert summary.num_tiles == 0 and summary.num_empty_tiles == 2


def test_bad_options_are_one_line_errors(large, tmp_path, capsys):
    annotations, _ = large
    line = one_line_error(["data", "slice", annotations, tmp_path / "o", "--tiles", 128, "--min-visible", 0], capsys)
    assert "--min-visible must be a fraction in (0, 1]" in line
    line = one_line_error(["data", "slice", annotations, tmp_path / "o", "--tiles", 8], capsys)
    assert "tile size must be an integer of at least 32" in line
