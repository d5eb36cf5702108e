"""Augmentation presets, mosaic, the stop-epoch policy and the collator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torchvision import tv_tensors

from defectfusion.config import TrainAugmentConfig
from defectfusion.data.coco import CocoDetection, load_coco
from defectfusion.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionCollator,
    MosaicDataset,
    build_eval_transform,
    build_train_dataset,
    build_train_transform,
    mosaic4,
)

# everything random off: tests switch on exactly what they check
QUIET = dict(photometric_prob=0.0, zoom_out_prob=0.0, iou_crop_prob=0.0, flip_prob=0.0, mosaic_prob=0.0)
NO_AFFINE = dict(mosaic_rotation=0.0, mosaic_translate=(0.0, 0.0), mosaic_scale=(1.0, 1.0))


def sample(h: int = 40, w: int = 60, box: tuple[float, ...] = (10, 5, 30, 25), label: int = 1, image_id: int = 1):
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=(h, w)),
        "labels": torch.tensor([label]),
        "image_id": image_id,
        "orig_size": torch.tensor([h, w]),
    }
    return image, target


def write_dataset(root: Path, n: int = 4) -> Path:
    """n solid-colour images (different sizes), each with one white box and its label = i % 2."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        w, h = 48 + 8 * i, 40 + 4 * i
        arr = np.full((h, w, 3), 40 * i + 20, dtype=np.uint8)
        arr[10:30, 12:36] = 255
        Image.fromarray(arr).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": i % 2, "bbox": [12, 10, 24, 20], "iscrowd": 0})
    cats = [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_flip_moves_a_known_box() -> None:
    tf = build_train_transform(TrainAugmentConfig(**{**QUIET, "flip_prob": 1.0}), image_size=(40, 60))
    image, target = sample()
    out_image, out = tf(image, target)
    assert out["boxes"].tolist() == [[60 - 30, 5, 60 - 10, 25]]
    assert torch.equal(out_image, image.flip(-1))
    assert out["labels"].tolist() == [1] and out["image_id"] == 1


def test_resize_scales_boxes_and_keeps_orig_size() -> None:
    image, target = sample(h=40, w=60)
    out_image, out = build_eval_transform((20, 120))(image, target)
    assert out_image.shape == (3, 20, 120)
    assert out["boxes"].tolist() == [[20, 2.5, 60, 12.5]]  # x * 2, y * 0.5
    assert tuple(out["boxes"].canvas_size) == (20, 120)
    assert out["orig_size"].tolist() == [40, 60]


def test_heavy_pipeline_keeps_boxes_valid() -> None:
    cfg = TrainAugmentConfig(photometric_prob=1.0, zoom_out_prob=1.0, iou_crop_prob=1.0)
    tf = build_train_transform(cfg, 64)
    for seed in range(10):
        torch.manual_seed(seed)
        image, target = sample()
        out_image, out = tf(image, target)
        assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.uint8
        boxes = out["boxes"]
        assert boxes.shape[0] == out["labels"].shape[0]
        assert bool((boxes[:, 2:] - boxes[:, :2] >= 1).all())
        assert bool((boxes >= 0).all() and (boxes[:, [0, 2]] <= 64).all() and (boxes[:, [1, 3]] <= 64).all())


def test_mosaic4_places_four_tiles_around_the_centre() -> None:
    samples = [sample(h=40, w=60, label=k, image_id=10 + k) for k in range(4)]
    image, target = mosaic4(samples, size=100, fill=0)
    assert image.shape == (3, 100, 100)
    # each 40x60 image fits a 50x50 quadrant as a 33x50 tile, pushed against the centre (50, 50)
    sx, sy = 50 / 60, 33 / 40
    box = torch.tensor([10 * sx, 5 * sy, 30 * sx, 25 * sy])
    offsets = torch.tensor([[0, 17, 0, 17], [50, 17, 50, 17], [0, 50, 0, 50], [50, 50, 50, 50]])
    assert torch.allclose(target["boxes"], box + offsets, atol=1e-4)
    assert target["labels"].tolist() == [0, 1, 2, 3]
    assert target["image_id"] == 10 and tuple(target["boxes"].canvas_size) == (100, 100)
    assert int(image[:, :17].sum()) == 0  # above the top tiles: empty canvas


def test_mosaic_dataset_gives_four_times_the_objects_inside_the_canvas(tmp_path: Path) -> None:
    index = load_coco(write_dataset(tmp_path))
    cfg = TrainAugmentConfig(**{**QUIET, **NO_AFFINE, "mosaic_prob": 1.0, "mosaic_output_size": 128})
    ds = build_train_dataset(index, cfg, image_size=128, seed=0)
    for i in range(len(ds)):
        image, target = ds[i]
        boxes = target["boxes"]
        assert image.shape == (3, 128, 128) and boxes.shape == (4, 4)
        assert bool((boxes >= 0).all() and (boxes <= 128).all())
        for x1, y1, x2, y2 in boxes.round().int().tolist():  # every box still covers a white block
            assert float(image[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].float().mean()) > 250
        assert target["image_id"] == i + 1

    cfg_affine = TrainAugmentConfig(**{**QUIET, "mosaic_prob": 1.0, "mosaic_output_size": 128})
    image, target = build_train_dataset(index, cfg_affine, image_size=96, seed=0)[0]
    assert image.shape == (3, 96, 96) and 1 <= target["boxes"].shape[0] <= 4


def test_train_dataset_is_deterministic_per_seed_epoch_index(tmp_path: Path) -> None:
    index = load_coco(write_dataset(tmp_path))
    ds = build_train_dataset(index, TrainAugmentConfig(mosaic_output_size=96), image_size=64, seed=3)
    again = build_train_dataset(index, TrainAugmentConfig(mosaic_output_size=96), image_size=64, seed=3)
    torch.manual_seed(123)  # the ambient RNG does not matter
    first = [ds[i] for i in (2, 0, 1)]
    torch.manual_seed(999)
    second = [again[i] for i in (2, 0, 1)]
    for (a_img, a_t), (b_img, b_t) in zip(first, second, strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_t["boxes"], b_t["boxes"])
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][0], first[k][0]) for k, i in enumerate((2, 0, 1)))


def test_stop_epoch_turns_heavy_augmentation_and_mosaic_off(tmp_path: Path) -> None:
    index = load_coco(write_dataset(tmp_path))
    cfg = TrainAugmentConfig(
        **{**NO_AFFINE, "photometric_prob": 1.0, "zoom_out_prob": 1.0, "flip_prob": 0.0, "mosaic_prob": 1.0},
        mosaic_output_size=64,
        stop_epoch=3,
    )
    ds = build_train_dataset(index, cfg, image_size=64, seed=0)
    plain = CocoDetection(index, build_eval_transform(64))
    assert ds[0][1]["boxes"].shape[0] == 4  # epoch 0: mosaic

    ds.set_epoch(3)
    assert not ds.dataset.transform.heavy_active
    for i in range(len(ds)):
        image, target = ds[i]
        ref_image, ref_target = plain[i]
        assert torch.equal(image, ref_image)  # only resize left (flip_prob is 0 here)
        assert torch.equal(target["boxes"], ref_target["boxes"])


def test_mosaic_stop_epoch_and_start_epoch_policy() -> None:
    cfg = TrainAugmentConfig(start_epoch=2, mosaic_stop_epoch=5, stop_epoch=8)
    assert [cfg.heavy_enabled(e) for e in range(10)] == [False, False] + [True] * 6 + [False, False]
    assert [cfg.mosaic_enabled(e) for e in range(10)] == [False, False, True, True, True] + [False] * 5
    assert not TrainAugmentConfig(mosaic_prob=0.0).mosaic_enabled(0)
    assert TrainAugmentConfig().heavy_enabled(10_000)  # stop_epoch None: never stops


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValidationError):
        TrainAugmentConfig(zoom_out_side_range=(0.5, 2.0))
    with pytest.raises(ValidationError):
        TrainAugmentConfig(flip_prob=1.5)
    with pytest.raises(ValidationError):
        TrainAugmentConfig(mosiac_prob=0.5)  # typo: unknown key


def test_collator_shapes_normalisation_and_cxcywh() -> None:
    a = sample(h=40, w=60, box=(10, 5, 30, 25), image_id=7)
    b = sample(h=40, w=60, box=(0, 0, 60, 40), image_id=8)
    b[1]["orig_size"] = torch.tensor([400, 600])
    batch = DetectionCollator(IMAGENET_MEAN, IMAGENET_STD)([a, b])
    assert batch["pixel_values"].shape == (2, 3, 40, 60) and batch["pixel_values"].dtype == torch.float32
    expected = (a[0].float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1
    )
    assert torch.allclose(batch["pixel_values"][0], expected, atol=1e-6)
    first, second = batch["labels"]
    assert first["class_labels"].dtype == torch.int64 and first["boxes"].dtype == torch.float32
    assert torch.allclose(first["boxes"], torch.tensor([[20 / 60, 15 / 40, 20 / 60, 20 / 40]]))
    assert torch.allclose(second["boxes"], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    assert batch["image_ids"].tolist() == [7, 8]
    assert batch["orig_sizes"].tolist() == [[40, 60], [400, 600]]

    plain = DetectionCollator()([a])
    assert torch.allclose(plain["pixel_values"][0], a[0].float() / 255)


def test_collator_handles_negatives_and_rejects_mixed_sizes() -> None:
    image, target = sample()
    target["boxes"] = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(40, 60))
    target["labels"] = torch.zeros(0, dtype=torch.int64)
    batch = DetectionCollator()([(image, target)])
    assert batch["labels"][0]["boxes"].shape == (0, 4) and batch["labels"][0]["class_labels"].shape == (0,)
    with pytest.raises(ValueError, match="share one size"):
        DetectionCollator()([sample(h=40), sample(h=32)])


def test_dataloader_with_workers_and_epochs(tmp_path: Path) -> None:
    index = load_coco(write_dataset(tmp_path))
    ds = build_train_dataset(index, TrainAugmentConfig(mosaic_output_size=96, stop_epoch=1), image_size=64, seed=0)
    assert isinstance(ds, MosaicDataset)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=DetectionCollator())
    seen = []
    for epoch in range(2):
        ds.set_epoch(epoch)  # workers are re-created each epoch and pick the epoch up
        seen.append([len(lab["class_labels"]) for batch in loader for lab in batch["labels"]])
    assert seen[1] == [1, 1, 1, 1]  # after stop_epoch: one object per image, no mosaic
    assert all(batch["pixel_values"].shape == (2, 3, 64, 64) for batch in loader)


@pytest.mark.parametrize("resize", ["plain", "letterbox"])
def test_resized_target_is_what_the_pipeline_without_random_steps_gives_from_the_boxes_alone(resize) -> None:
    from defectfusion.data.transforms import resized_target

    generator = torch.Generator().manual_seed(0)
    h, w = 120, 50
    corners = torch.rand(12, 2, generator=generator) * torch.tensor([w, h])
    sides = torch.rand(12, 2, generator=generator) * 30
    sides[:4] = 0.3  # boxes that shrink below a pixel: sanitize drops them
    boxes = torch.cat([corners, (corners + sides).clamp(max=torch.tensor([w, h]))], dim=1)
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
        "labels": torch.arange(12),
        "image_id": 3,
        "orig_size": torch.tensor([h, w]),
    }
    # heavy steps whose probabilities are all 0 are no steps: the heavy window is the light pipeline
    transform = build_train_transform(TrainAugmentConfig(**QUIET), (64, 64), resize)
    assert transform.heavy_active and transform.heavy is transform.light
    _, expected = transform(image, target)
    got = resized_target(target, (64, 64), resize, sanitize_min_size=1.0)
    assert 0 < len(got["labels"]) < 12 and torch.equal(got["labels"], expected["labels"])
    torch.testing.assert_close(got["boxes"].as_subclass(torch.Tensor), expected["boxes"].as_subclass(torch.Tensor))
    assert got["boxes"].canvas_size == expected["boxes"].canvas_size == (64, 64)
    assert torch.equal(got["orig_size"], expected["orig_size"]) and got["image_id"] == 3
