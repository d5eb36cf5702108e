"""Sliced inference: tiles cover the image, boxes come back at their true pixels, overlaps merge to one."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from defectfusion.engine.prediction.predictor import Predictor
from defectfusion.engine.prediction.tiling import TiledPredictor, merge_detections, tile_grid
from defectfusion.errors import ConfigError
from defectfusion.structures import Detections

TILE = 256
# (x0, y0, x1, y1), exclusive ends: inside one tile, in the overlap of four tiles, at the far corner
SQUARES = [(100, 100, 120, 120), (215, 215, 237, 235), (962, 660, 990, 690), (600, 300, 630, 318)]


def square_backend(whole_only: bool):
    """A backend that "detects" bright blobs: their pixel boxes, scaled to the input's original size.

    ``whole_only``: ignore blobs touching the crop's border, as if the detector saw only whole objects.
    """

    def backend(pixel_values: torch.Tensor, orig_sizes: torch.Tensor) -> list[Detections]:
        out = []
        for pixels, (h, w) in zip(pixel_values, orig_sizes.tolist(), strict=True):
            mask = (pixels.mean(0) > 0.5).numpy()
            sy, sx = h / mask.shape[0], w / mask.shape[1]
            boxes, scores = [], []
            for rows, cols in ndimage.find_objects(ndimage.label(mask)[0]):
                touches = rows.start == 0 or cols.start == 0 or rows.stop == mask.shape[0] or cols.stop == mask.shape[1]
                if whole_only and touches:
                    continue
                boxes.append([cols.start * sx, rows.start * sy, cols.stop * sx, rows.stop * sy])
                scores.append(0.9 if not touches else 0.5)
            order = np.argsort(scores)[::-1].copy()
            out.append(
                Detections(
                    torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)[order],
                    torch.tensor(scores, dtype=torch.float32)[order],
                    torch.zeros(len(boxes), dtype=torch.int64),
                )
            )
        return out

    return backend


def image_with_squares(width: int = 1000, height: int = 700) -> torch.Tensor:
    img = torch.zeros(3, height, width, dtype=torch.uint8)
    for x0, y0, x1, y1 in SQUARES:
        img[:, y0:y1, x0:x1] = 255
    return img


def predictor(whole_only: bool = True, batch_size: int = 3) -> Predictor:
    return Predictor(square_backend(whole_only), ["square"], (TILE, TILE), threshold=0.1, batch_size=batch_size)


def sorted_boxes(det: Detections) -> list[list[float]]:
    return sorted(det.boxes.tolist())


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [(700, 1000, 256, 0.2), (2048, 2048, 512, 0.25)])
def test_tiles_cover_the_image_full_size_and_overlapping(height, width, tile, overlap):
    tiles = tile_grid(height, width, tile, overlap)
    covered = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in tiles:
        assert (x1 - x0, y1 - y0) == (tile, tile)  # the border tiles are shifted inward, not cut
        assert 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    assert all(0 < b - a <= tile - int(overlap * tile) for a, b in zip(xs, xs[1:], strict=False))


def test_an_image_smaller_than_a_tile_is_one_tile_of_its_size():
    assert tile_grid(100, 180, 256) == [(0, 0, 180, 100)]


def test_squares_are_found_at_their_true_pixels_and_overlap_duplicates_merge():
    image = image_with_squares()
    inner = predictor()
    raw = sum(len(d) for d in inner([image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in tile_grid(700, 1000, TILE)]))
    assert raw > len(SQUARES)  # the overlaps do see squares more than once
    det = TiledPredictor(inner, TILE, 0.2)([image])[0]
    assert len(det) == len(SQUARES)
    torch.testing.assert_close(
        torch.tensor(sorted_boxes(det)), torch.tensor(sorted(map(list, SQUARES)), dtype=torch.float32), atol=1, rtol=0
    )
    assert det.scores.tolist() == sorted(det.scores.tolist(), reverse=True)


def test_greedy_nmm_merges_boxes_cut_by_tile_borders_into_the_whole_box():
    image = image_with_squares()
    cut = TiledPredictor(predictor(whole_only=False), TILE, 0.2, merge="nms")([image])[0]
    assert len(cut) > len(SQUARES)  # NMS at IoU 0.5 keeps a sliver of a square as its own box
    det = TiledPredictor(predictor(whole_only=False), TILE, 0.2, merge="nmm", merge_metric="IOS")([image])[0]
    assert len(det) == len(SQUARES)
    torch.testing.assert_close(
        torch.tensor(sorted_boxes(det)), torch.tensor(sorted(map(list, SQUARES)), dtype=torch.float32), atol=1, rtol=0
    )
    assert det.scores.max() == pytest.approx(0.9)


def test_full_image_pass_adds_what_only_the_whole_image_shows():
    big = torch.zeros(3, 700, 1000, dtype=torch.uint8)
    big[:, 100:650, 150:900] = 255  # larger than any tile: every tile sees a cut piece only
    only_tiles = TiledPredictor(predictor(), TILE)([big])[0]
    with_full = TiledPredictor(predictor(), TILE, full_image=True)([big])[0]
    assert len(only_tiles) == 0
    assert len(with_full) == 1
    torch.testing.assert_close(with_full.boxes[0], torch.tensor([150.0, 100.0, 900.0, 650.0]), atol=4, rtol=0)


def test_predict_files_matches_call_and_reports_sizes(tmp_path):
    image = image_with_squares()
    path = tmp_path / "big.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    tiled = TiledPredictor(predictor(batch_size=8), TILE, 0.2)
    (pred,) = list(tiled.predict_files([path], [42]))
    assert pred.image_id == 42 and pred.size == (700, 1000)
    assert sorted_boxes(pred.detections) == sorted_boxes(tiled([image])[0])


def test_merge_is_class_wise_and_bad_settings_are_rejected():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    det = Detections(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]))
    for method in ("nms", "nmm"):
        merged = merge_detections(det, method)
        assert merged.labels.tolist() == [0, 1] and merged.scores.tolist() == pytest.approx([0.9, 0.7])
    with pytest.raises(ConfigError, match="tile size must be an integer of at least 32"):
        TiledPredictor(predictor(), 8)
    with pytest.raises(ConfigError, match=r"tile overlap must be a fraction in \[0, 1\)"):
        tile_grid(100, 100, 64, 1.0)
    with pytest.raises(ConfigError, match="merge must be one of"):
        TiledPredictor(predictor(), 64, merge="wbf")


def test_predict_with_tiles_writes_true_boxes_and_the_cli_wants_tiles_for_overlap(tmp_path, capsys):
    from defectfusion.commands.predict import predict
    from tests.helpers import one_line_error

    path = tmp_path / "big.png"
    Image.fromarray(image_with_squares().permute(1, 2, 0).numpy()).save(path)
    run = predict(predictor(), [path], tmp_path / "out", threshold=0.2, tiles=TILE, overlap=0.2, draw=False)
    results = json.loads(run.results_json.read_text())
    assert sorted([round(v) for v in r["bbox"]] for r in results) == sorted(
        [x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in SQUARES
    )
    resized = predict(predictor(), [path], None, threshold=0.2)  # 1000 x 700 squeezed to 256: other boxes
    assert sorted_boxes(resized.predictions[0].detections) != sorted_boxes(run.predictions[0].detections)
    line = one_line_error(["predict", path, "--checkpoint", tmp_path, "--overlap", "0.3"], capsys)
    assert "--overlap and --full-image refine --tiles SIZE" in line


def test_without_sahi_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sahi.slicing", None)  # what an uninstalled package looks like to import
    with pytest.raises(ConfigError, match=r"needs sahi, which is not installed .*pip install 'defectfusion\[tiles\]'"):
        tile_grid(100, 100, 64)
