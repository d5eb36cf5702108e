"""explain --tiles: each tile explained at native resolution, maps stitched, detections merged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from defectfusion.engine.explain.explain_tiles import explain_tiled
from defectfusion.engine.explain.explainer import explain_image
from defectfusion.models.checkpoint import load_detector

pytest.importorskip("sahi")


@pytest.fixture(scope="module")
def mosaic(kit):
    """Four 96 px validation images side by side: a 192 x 192 image whose 96 px tiles are those images."""
    files = sorted((kit.data / "val" / "images").iterdir())[:4]
    parts = [np.array(Image.open(f).convert("RGB")) for f in files]
    top, bottom = np.concatenate(parts[:2], 1), np.concatenate(parts[2:], 1)
    return torch.from_numpy(np.concatenate([top, bottom], 0)).permute(2, 0, 1).contiguous(), parts


def test_tiles_are_explained_as_images_and_placed_where_they_lie(kit, mosaic):
    model = load_detector(kit.fused)
    image, parts = mosaic
    tiled = explain_tiled(model, image, 96, 0.0, threshold=0.0, attribution=False, max_detections=50)
    assert tuple(tiled.maps.shape[-2:]) == (192, 192) and tiled.image.shape == (192, 192, 3)
    corner = torch.from_numpy(parts[3]).permute(2, 0, 1).contiguous()
    alone = explain_image(model, corner, threshold=0.0, attribution=False, max_detections=50)
    torch.testing.assert_close(tiled.maps[:, 96:, 96:], alone.maps)  # no overlap: the tile's own maps
    assert set(tiled.class_maps) == set(alone.class_maps)
    # the bottom-right tile's detections come back shifted by (96, 96)
    shifted = [d for d in tiled.detections if d.box[0] >= 96 and d.box[1] >= 96]
    assert shifted
    best = max(alone.detections, key=lambda d: d.score)
    twin = min(shifted, key=lambda d: sum(abs(a - b - 96) for a, b in zip(d.box, best.box, strict=True)))
    assert twin.box == pytest.approx([v + 96 for v in best.box], abs=1e-4) and twin.score == best.score


def test_overlapping_tiles_average_the_maps_and_merge_duplicates(kit, mosaic):
    model = load_detector(kit.fused)
    image, _ = mosaic
    tiled = explain_tiled(model, image, 96, 0.5, threshold=0.2, attribution=True, max_detections=8)
    assert len(tiled.detections) <= 8 and torch.isfinite(tiled.maps).all()
    for d in tiled.detections:
        assert all(tuple(m.shape) == (192, 192) for m in d.maps.values())
    from torchvision.ops import box_iou

    boxes = torch.tensor([d.box for d in tiled.detections]).reshape(-1, 4)
    labels = torch.tensor([d.label for d in tiled.detections])
    iou = box_iou(boxes, boxes).fill_diagonal_(0)
    assert not ((iou > 0.5) & (labels[:, None] == labels[None, :])).any()  # duplicates of a class merged


def test_explain_cli_takes_tiles(kit, mosaic, tmp_path, capsys):
    from defectfusion.cli import main

    image, _ = mosaic
    path = tmp_path / "large.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    argv = ["explain", "--checkpoint", str(kit.fused), str(path), "--out", str(tmp_path / "x"), "--tiles", "96"]
    assert main(argv) == 0, capsys.readouterr().err
    assert any((tmp_path / "x").rglob("*.png"))
    assert main([*argv, "--full-image"]) == 2
    assert "drop --full-image" in capsys.readouterr().err
