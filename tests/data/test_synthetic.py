"""The synthetic dataset: deterministic, valid COCO, all six classes, atomic, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from defectfusion.data.synthetic import CATEGORIES, generate_synthetic_dataset, image_rng, render_image
from defectfusion.errors import DataError

EXPECTED = [
    "NORMAL",
    "DEFORMACIONES",
    "ROTURA_FRACTURA",
    "RAYONES_ARANAZOS",
    "PERFORACIONES",
    "CONTAMINACION",
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    return generate_synthetic_dataset(out, train=60, val=12, size=128, seed=3)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", train=5, val=2, size=96, seed=7)
    b = generate_synthetic_dataset(tmp_path / "b", train=5, val=2, size=96, seed=7)
    c = generate_synthetic_dataset(tmp_path / "c", train=5, val=2, size=96, seed=8)
    fa, fb, fc = _files(a.root), _files(b.root), _files(c.root)
    assert len(fa) == 5 + 2 + 2 + 1  # images, two annotation files, descriptions
    assert fa == fb
    assert fa["train/annotations.json"] != fc["train/annotations.json"]
    assert fa["train/images/000000.png"] != fc["train/images/000000.png"]


def test_an_image_does_not_depend_on_how_many_came_before(tmp_path):
    small = generate_synthetic_dataset(tmp_path / "s", train=2, val=1, size=64)
    large = generate_synthetic_dataset(tmp_path / "l", train=4, val=1, size=64)
    for name in ("train/images/000000.png", "train/images/000001.png", "val/images/000000.png"):
        assert (small.root / name).read_bytes() == (large.root / name).read_bytes()


def test_coco_is_valid_and_boxes_lie_inside_images(dataset):
    from pycocotools.coco import COCO

    for split in dataset.splits.values():
        coco = COCO(str(split.annotations))
        assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == EXPECTED
        assert sorted(coco.cats) == list(range(6))
        assert len(coco.imgs) == split.num_images
        for img in coco.imgs.values():
            with Image.open(split.images_dir / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (128, 128)
                assert im.mode == "RGB"
        ids = [a["id"] for a in coco.dataset["annotations"]]
        assert len(set(ids)) == len(ids) and min(ids) >= 1
        for a in coco.dataset["annotations"]:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= 128 and y + h <= 128
            assert a["area"] == pytest.approx(w * h, abs=0.02)
            assert a["iscrowd"] == 0 and a["image_id"] in coco.imgs
        counts = {name: len(coco.getAnnIds(catIds=[i])) for i, name in enumerate(EXPECTED)}
        assert counts == split.instances
        empty = sum(not coco.getAnnIds(imgIds=[i]) for i in coco.imgs)
        assert empty == split.num_empty_images


def test_all_six_classes_in_train(dataset):
    assert tuple(CATEGORIES) == tuple(EXPECTED)
    train = dataset.splits["train"]
    assert train.num_images == 60 and dataset.splits["val"].num_images == 12
    assert all(n >= 3 for n in train.instances.values()), train.instances


def test_some_images_are_empty_and_objects_are_not_tiny():
    empty, sides = 0, []
    for i in range(150):
        pixels, objects = render_image(image_rng(0, 0, i), 64)
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
        empty += not objects
        sides += [max(o.bbox[2], o.bbox[3]) * 4 for o in objects]  # in pixels at 256
    assert 0.03 <= empty / 150 <= 0.2
    assert 15 <= np.percentile(sides, 5) and np.percentile(sides, 95) <= 130


def test_descriptions_are_copied_and_match_categories(dataset):
    desc = yaml.safe_load(dataset.descriptions.read_text(encoding="utf-8"))
    assert [c["name"] for c in desc["classes"]] == EXPECTED
    cats = json.loads(dataset.splits["val"].annotations.read_text())["categories"]
    assert [c["name"] for c in cats] == EXPECTED


def test_no_temporary_files_left_and_rerun_replaces_split(tmp_path):
    out = tmp_path / "ds"
    generate_synthetic_dataset(out, train=4, val=1, size=64)
    summary = generate_synthetic_dataset(out, train=2, val=1, size=64, progress=True)
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert not [n for n in names if Path(n).name.startswith(".") or n.endswith(".tmp")]
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == ["000000.png", "000001.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert summary.splits["train"].num_images == 2


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"train": -1}, "train"),
        ({"val": -3}, "val"),
        ({"size": 32}, "size"),
        ({"seed": -1}, "seed"),
        ({"train": 2.5}, "train"),
    ],
)
def test_bad_arguments_raise_data_error_naming_them(tmp_path, kwargs, name):
    with pytest.raises(DataError, match=name):
        generate_synthetic_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds" / "train").exists()


def test_unwritable_out_raises_data_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="out folder"):
        generate_synthetic_dataset(blocker / "ds", train=1, val=1, size=64)
