"""COCO loading, validation and image decoding (tiny datasets written to tmp_path)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from defectfusion.data.coco import CocoDetection, CocoWarning, load_coco
from defectfusion.data.images import load_image
from defectfusion.errors import DataError

CATS = [{"id": 7, "name": "crack"}, {"id": 3, "name": "scratch"}]


def write_coco(
    root: Path,
    images: dict[str, Image.Image],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]] = CATS,
    sizes: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """Save ``images`` under root/images, write root/annotations.json; ids are 1.. in order."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, (name, im) in enumerate(images.items(), start=1):
        im.save(root / "images" / name, **({"exif": im.info["exif"]} if "exif" in im.info else {}))
        w, h = (sizes or {}).get(name, im.size)
        records.append({"id": i, "file_name": name, "width": w, "height": h})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": records, "annotations": annotations, "categories": categories}))
    return path


def ann(ann_id: int, image_id: int, cat: int, bbox: list[float], **extra: Any) -> dict[str, Any]:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0, **extra}


def rgb(w: int = 40, h: int = 30, color: tuple[int, int, int] = (10, 20, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), color)


# --------------------------------------------------------------------------- index and targets


def test_labels_follow_categories_order_negatives_kept_crowd_excluded(tmp_path: Path) -> None:
    path = write_coco(
        tmp_path,
        {"a.png": rgb(), "b.png": rgb(), "neg.png": rgb()},
        [
            ann(1, 1, 3, [1, 2, 10, 8]),
            ann(2, 1, 7, [5, 5, 10, 10]),
            ann(3, 2, 7, [0, 0, 20, 20], iscrowd=1),
        ],
    )
    index = load_coco(path)
    assert index.class_names == ("crack", "scratch")
    assert index.label_to_category_id == (7, 3)
    assert index.category_id_to_label == {7: 0, 3: 1}
    assert len(index) == 3 and index.annotations[3] == []
    assert [a.iscrowd for a in index.annotations[2]] == [True]  # kept for evaluation

    ds = CocoDetection(index)
    assert len(ds) == 3
    image, target = ds[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (30, 40)
    assert boxes.tolist() == [[1, 2, 11, 10], [5, 5, 15, 15]]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 0]
    assert target["image_id"] == 1 and target["orig_size"].tolist() == [30, 40]

    _, crowd_only = ds[1]
    assert crowd_only["boxes"].shape == (0, 4) and crowd_only["labels"].shape == (0,)
    _, negative = ds[2]
    assert negative["boxes"].shape == (0, 4) and negative["image_id"] == 3

    gt = index.to_coco_dict()
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 1]
    assert gt["annotations"][0]["bbox"] == [1, 2, 10, 8]
    assert [c["id"] for c in gt["categories"]] == [7, 3]


def test_images_folder_defaults_to_json_folder_without_images_subfolder(tmp_path: Path) -> None:
    rgb().save(tmp_path / "x.png")
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [{"id": 5, "file_name": "x.png"}], "annotations": [], "categories": CATS}))
    index = load_coco(path)
    assert index.images_dir == tmp_path
    assert (index.images[0].width, index.images[0].height) == (40, 30)  # read from the file


def test_degenerate_and_outside_boxes_warn_once_and_training_works(tmp_path: Path) -> None:
    from defectfusion.config import TrainAugmentConfig
    from defectfusion.data.transforms import DetectionCollator, build_train_dataset

    path = write_coco(
        tmp_path,
        {"a.png": rgb(), "b.png": rgb()},
        [
            ann(1, 1, 7, [5, 5, 0, 10]),  # zero width
            ann(2, 1, 7, [5, 5, 10, -3]),  # negative height
            ann(3, 1, 3, [30, 20, 20, 20]),  # reaches outside: clipped to 30..40 x 20..30
            ann(4, 2, 3, [-4, -4, 10, 10]),  # clipped to 0..6
            ann(5, 2, 7, [2, 2, 5, 5]),
        ],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = load_coco(path)
    ours = [w for w in caught if issubclass(w.category, CocoWarning)]
    assert len(ours) == 1
    msg = str(ours[0].message)
    assert "dropped 2 box" in msg and "clipped 2 box" in msg and "annotations.json" in msg
    assert "annotation id 1 " in msg and "annotation id 3 " in msg
    assert (index.num_dropped_boxes, index.num_clipped_boxes) == (2, 2)
    assert [a.bbox for a in index.annotations[1]] == [(30, 20, 40, 30)]
    assert [a.bbox for a in index.annotations[2]] == [(0, 0, 6, 6), (2, 2, 7, 7)]

    ds = build_train_dataset(index, TrainAugmentConfig(), image_size=32, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=DetectionCollator())
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (2, 3, 32, 32)


# --------------------------------------------------------------------------- malformed files


def test_truncated_json_names_file_and_position(tmp_path: Path) -> None:
    path = write_coco(tmp_path, {"a.png": rgb()}, [ann(1, 1, 7, [1, 1, 5, 5])])
    path.write_text(path.read_text()[:-25])
    with pytest.raises(DataError) as err:
        load_coco(path)
    msg = str(err.value)
    assert str(path) in msg and "not valid JSON" in msg and "line 1, column" in msg and "truncated" in msg


def test_empty_and_non_object_json(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("")
    with pytest.raises(DataError, match="not valid JSON"):
        load_coco(path)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a COCO object"):
        load_coco(path)
    with pytest.raises(DataError, match="does not exist"):
        load_coco(tmp_path / "nope.json")


def test_missing_top_level_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError) as err:
        load_coco(path)
    assert "['annotations', 'categories']" in str(err.value) and str(path) in str(err.value)


def test_all_missing_images_are_listed_up_to_a_cap(tmp_path: Path) -> None:
    path = write_coco(tmp_path, {"present.png": rgb()}, [])
    data = json.loads(path.read_text())
    data["images"] += [{"id": 100 + k, "file_name": f"gone_{k:02d}.png", "width": 4, "height": 4} for k in range(25)]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        load_coco(path)
    msg = str(err.value)
    assert "25 of 26 image file(s)" in msg and str(tmp_path / "images") in msg
    assert all(f"gone_{k:02d}.png" in msg for k in range(20)) and "gone_20.png" not in msg
    assert "and 5 more" in msg and "present.png" not in msg

    data["images"] = data["images"][:4]  # present + 3 missing: all three named
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="gone_00.png, gone_01.png, gone_02.png"):
        load_coco(path)


def test_unknown_category_id_names_annotation_and_known_ids(tmp_path: Path) -> None:
    path = write_coco(tmp_path, {"a.png": rgb()}, [ann(1, 1, 7, [1, 1, 5, 5]), ann(42, 1, 9, [1, 1, 5, 5])])
    with pytest.raises(DataError) as err:
        load_coco(path)
    msg = str(err.value)
    assert str(path) in msg and "annotation id 42" in msg and "category_id 9" in msg and "[7, 3]" in msg


def test_unknown_image_id_and_bad_records(tmp_path: Path) -> None:
    path = write_coco(tmp_path, {"a.png": rgb()}, [ann(8, 55, 7, [1, 1, 5, 5])])
    with pytest.raises(DataError, match=r"annotation id 8 \(annotations\[0\]\) has image_id 55"):
        load_coco(path)
    path = write_coco(tmp_path, {"a.png": rgb()}, [ann(8, 1, 7, [1, 1, 5])])
    with pytest.raises(DataError, match=r"annotation id 8 .* expected 4 numbers"):
        load_coco(path)
    path = write_coco(tmp_path, {"a.png": rgb()}, [], categories=[])
    with pytest.raises(DataError, match="'categories' is empty"):
        load_coco(path)


def test_size_mismatch_with_json_is_an_error(tmp_path: Path) -> None:
    path = write_coco(tmp_path, {"a.png": rgb(40, 30)}, [], sizes={"a.png": (50, 30)})
    ds = CocoDetection(load_coco(path))
    with pytest.raises(DataError, match=r"a.png \(image id 1\) is 40x30 .* annotations say 50x30"):
        ds[0]


def test_corrupt_image_is_named_at_load_and_by_verify(tmp_path: Path) -> None:
    path = write_coco(tmp_path, {"ok.png": rgb(), "cut.png": rgb(), "junk.png": rgb()}, [])
    cut = tmp_path / "images" / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:200])
    (tmp_path / "images" / "junk.png").write_bytes(b"this is not an image")
    index = load_coco(path)
    ds = CocoDetection(index)
    ds[0]
    with pytest.raises(DataError, match=r"cut.png \(image id 2\) is corrupt or truncated"):
        ds[1]
    with pytest.raises(DataError) as err:
        index.verify_images(progress=False)
    msg = str(err.value)
    assert "2 of 3 images" in msg and "cut.png" in msg and "junk.png" in msg and "ok.png" not in msg


# --------------------------------------------------------------------------- image modes


def test_grayscale_rgba_palette_load_as_rgb(tmp_path: Path) -> None:
    gray = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, mode="L")
    rgba = Image.new("RGBA", (4, 3), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    pal = Image.new("P", (4, 3), 0)
    pal.putpalette([200, 10, 10, 10, 200, 10] + [0] * 762)
    pal.putpixel((3, 2), 1)
    for name, im in {"g.png": gray, "a.png": rgba, "p.png": pal}.items():
        im.save(tmp_path / name)

    g = load_image(tmp_path / "g.png", expected_size=(4, 3))
    assert g.dtype == torch.uint8 and g.shape == (3, 3, 4)
    assert torch.equal(g[0], g[1]) and torch.equal(g[0], g[2])
    assert g[0].flatten().tolist() == [v * 20 for v in range(12)]

    a = load_image(tmp_path / "a.png")
    assert a.shape == (3, 3, 4)
    assert a[:, 0, 0].tolist() == [255, 255, 255]
    assert a[:, 0, 1].tolist() == [127, 127, 127]
    assert a[:, 2, 3].tolist() == [0, 0, 255]

    p = load_image(tmp_path / "p.png")
    assert p[:, 0, 0].tolist() == [200, 10, 10] and p[:, 2, 3].tolist() == [10, 200, 10]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(1, 64).repeat(2, axis=0)
    Image.fromarray(ramp).save(tmp_path / "r16.png")
    assert Image.open(tmp_path / "r16.png").mode == "I;16"
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "r32.tif")  # mode "I", 16-bit data
    for name in ("r16.png", "r32.tif"):
        row = load_image(tmp_path / name)[0, 0].to(torch.int64)
        assert row[0] == 0 and row[-1] == 255
        assert bool((row[1:] >= row[:-1]).all())  # ordering kept
        assert len(set(row.tolist())) > 50  # a real ramp, not a clip at 255
        assert abs(int(row[32]) - round(ramp[0, 32] / 257)) <= 1


def _exif_rotated_image() -> Image.Image:
    """Stored 40x20 with a white 8x6 block at the top-left; EXIF 6 = display rotated 90 deg CW."""
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[0:6, 0:8] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.info["exif"] = exif.tobytes()
    return im


def test_exif_rotation_gives_displayed_orientation_and_boxes_line_up(tmp_path: Path) -> None:
    # displayed image: 20 wide, 40 tall; the block lands at the top-right: x 14..20, y 0..8
    path = write_coco(
        tmp_path,
        {"rot.png": _exif_rotated_image()},
        [ann(1, 1, 7, [14, 0, 6, 8])],
        sizes={"rot.png": (20, 40)},
    )
    image, target = CocoDetection(load_coco(path))[0]
    assert image.shape == (3, 40, 20)
    x1, y1, x2, y2 = (int(v) for v in target["boxes"][0])
    assert (x1, y1, x2, y2) == (14, 0, 20, 8)
    assert bool((image[:, y1:y2, x1:x2] == 255).all())
    assert int(image.sum()) == 255 * 3 * 6 * 8  # nothing white outside the box


def test_exif_ignored_by_annotation_tool_keeps_stored_orientation(tmp_path: Path) -> None:
    # the json gives the stored size (40x20) and boxes in stored pixels: accept, do not rotate
    path = write_coco(
        tmp_path,
        {"rot.png": _exif_rotated_image()},
        [ann(1, 1, 7, [0, 0, 8, 6])],
        sizes={"rot.png": (40, 20)},
    )
    image, target = CocoDetection(load_coco(path))[0]
    assert image.shape == (3, 20, 40)
    assert bool((image[:, 0:6, 0:8] == 255).all())
