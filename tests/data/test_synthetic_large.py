"""`synth --defect-scale small`: large images with several 12-48 px defects; the default stays as it was."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from defectfusion.data.synthetic import generate_synthetic_dataset, image_rng, render_image
from defectfusion.errors import DataError
from tests.helpers import run_cli


def test_small_defects_on_2048_px_images(tmp_path):
    summary = generate_synthetic_dataset(tmp_path / "big", train=2, val=1, size=2048, seed=1, defect_scale="small")
    for split in summary.splits.values():
        data = json.loads(split.annotations.read_text())
        assert data["info"]["defect_scale"] == "small"
        for im in data["images"]:
            assert (im["width"], im["height"]) == (2048, 2048)
            with Image.open(split.images_dir / im["file_name"]) as pil:
                assert pil.size == (2048, 2048)
        per_image = {im["id"]: 0 for im in data["images"]}
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            assert 12 <= max(w, h) <= 48 and min(w, h) >= 2
            assert x >= 0 and y >= 0 and x + w <= 2048 and y + h <= 2048
            per_image[a["image_id"]] += 1
        assert all(n >= 8 for n in per_image.values()), per_image  # several per image
        assert len({a["category_id"] for a in data["annotations"]}) >= 4


def test_small_scale_is_deterministic_and_the_default_is_unchanged():
    a_img, a_obj = render_image(image_rng(4, 0, 0), 512, "small")
    b_img, b_obj = render_image(image_rng(4, 0, 0), 512, "small")
    assert (a_img == b_img).all() and a_obj == b_obj
    n_img, n_obj = render_image(image_rng(4, 0, 0), 512)
    assert n_obj != a_obj
    # default objects are sized relative to the image: at 512 px many are over 48 px
    assert max(max(o.bbox[2], o.bbox[3]) for o in n_obj) > 48 or not n_obj
    with pytest.raises(DataError, match="defect scale must be one of"):
        render_image(image_rng(0, 0, 0), 256, "tiny")


def test_cli_defect_scale_option(tmp_path, capsys):
    from defectfusion.cli import main

    assert (
        main(["synth", str(tmp_path / "s"), "--train", "1", "--val", "1", "--size", "512", "--defect-scale", "small"])
        == 0
    )
    data = json.loads((tmp_path / "s" / "train" / "annotations.json").read_text())
    assert data["info"]["defect_scale"] == "small"
    assert all(12 <= max(a["bbox"][2:]) <= 48 for a in data["annotations"])
    code, _, _ = run_cli(["synth", tmp_path / "d", "--train", 1, "--val", 1, "--size", 64], capsys)
    assert code == 0 and "defect_scale" not in (tmp_path / "d" / "train" / "annotations.json").read_text()
