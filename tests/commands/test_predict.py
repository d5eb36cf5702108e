"""predict: file/folder/glob inputs, COCO ids, results json, drawn images, any backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from defectfusion.commands.predict import predict, resolve_category_ids
from defectfusion.data.images import collect_images
from defectfusion.engine.evaluation.results_file import evaluate_results_file
from defectfusion.engine.prediction.predictor import Predictor
from defectfusion.errors import CheckpointError, DataError
from defectfusion.models.inference import InputSpec
from defectfusion.structures import Detections


def test_inputs_can_be_files_folders_and_globs(kit, tmp_path):
    images = kit.val_images
    folder = collect_images([images])
    assert len(folder) == 8 and folder == sorted(folder)
    globbed = collect_images([str(images / "00000[0-3].png")])
    assert [p.name for p in globbed] == ["000000.png", "000001.png", "000002.png", "000003.png"]
    mixed = collect_images([images / "000005.png", str(images / "*.png")])
    assert mixed[0].name == "000005.png" and len(mixed) == 8  # duplicates kept once, first position wins
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        collect_images([str(images / "*.jpg"), tmp_path, tmp_path / "missing.png", images])
    message = str(err.value)
    assert "3 input(s) matched no image" in message
    assert "*.jpg" in message and str(tmp_path / "missing.png") in message and str(tmp_path) in message
    with pytest.raises(DataError, match="no images given"):
        collect_images([])


def test_predict_writes_results_json_and_drawn_images_and_respects_the_threshold(kit, tmp_path):
    low = predict(kit.fused, [kit.val_images], tmp_path / "low", threshold=0.0, top_k=40, progress=False)
    high = predict(kit.fused, [str(kit.val_images / "*.png")], tmp_path / "high", threshold=0.45, progress=False)
    assert len(low.predictions) == len(high.predictions) == 8
    assert low.num_detections == 8 * 40 > high.num_detections > 0
    records = json.loads(high.results_json.read_text())
    assert len(records) == high.num_detections
    assert all(r["score"] >= 0.45 for r in records)
    assert {r["image_id"] for r in records} <= set(range(1, 9))
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0 for r in records)
    summary = json.loads(high.predictions_json.read_text())
    assert summary["num_images"] == 8 and summary["threshold"] == 0.45
    assert {d["class"] for im in summary["images"] for d in im["detections"]} <= set(high.class_names)
    drawn = sorted((tmp_path / "high" / "images").iterdir())
    assert [p.name for p in drawn] == [f"{i:06d}.png" for i in range(8)]
    for entry, path in zip(summary["images"], drawn, strict=True):
        assert entry["drawn"] == str(path)
        with Image.open(path) as im, Image.open(entry["file"]) as original:
            assert im.format == "PNG" and im.size == (640, 640)  # small images are drawn enlarged
            plain = original.convert("RGB").resize((640, 640), Image.Resampling.BICUBIC)
            changed = np.any(np.asarray(im.convert("RGB")) != np.asarray(plain))
            assert changed == bool(entry["detections"])  # boxes drawn exactly where there are detections


def test_category_ids_come_from_the_annotations_or_a_mapping(kit, tmp_path):
    data = json.loads(kit.val_ann.read_text())
    for c in data["categories"]:
        c["id"] += 10
    for a in data["annotations"]:
        a["category_id"] += 10
        a["image_id"] += 100
    for im in data["images"]:
        im["id"] += 100
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    run = predict(
        kit.fused,
        [kit.val_images],
        tmp_path / "out",
        threshold=0.0,
        top_k=5,
        annotations=ann,
        draw=False,
        progress=False,
    )
    records = json.loads(run.results_json.read_text())
    assert {r["category_id"] for r in records} <= set(range(10, 16))
    assert {r["image_id"] for r in records} == set(range(101, 109))
    assert not (tmp_path / "out" / "images").exists()
    # a results file written with the dataset's ids is what the evaluator reads
    metrics = evaluate_results_file(run.results_json, ann)
    assert metrics.num_images == 8 and metrics.num_detections == 8 * 5

    names = run.class_names
    assert resolve_category_ids(names, category_ids=list(range(1, 7))) == [1, 2, 3, 4, 5, 6]
    assert resolve_category_ids(names, category_ids={n: 7 + i for i, n in enumerate(names)}) == list(range(7, 13))
    assert resolve_category_ids(names) == list(range(6))
    with pytest.raises(DataError, match="got 2 category ids for 6 classes"):
        resolve_category_ids(names, category_ids=[1, 2])
    with pytest.raises(DataError, match="unique"):
        resolve_category_ids(names, category_ids=[1] * 6)
    data["categories"] = data["categories"][:5]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] < 15]  # drop CONTAMINACION
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"the model's classes \['CONTAMINACION'\] are not among its categories"):
        resolve_category_ids(names, annotations=ann)


def test_images_missing_from_the_annotations_are_named(kit, tmp_path):
    data = json.loads(kit.val_ann.read_text())
    data["images"] = data["images"][:6]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] <= 6]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"2 image\(s\) are not listed in .*000006.png, .*000007.png"):
        predict(kit.fused, [kit.val_images], tmp_path / "out", annotations=ann, progress=False)


def test_any_backend_plugs_in(kit, tmp_path):
    calls = []

    def backend(pixel_values, orig_sizes):
        calls.append((tuple(pixel_values.shape), orig_sizes.tolist()))
        return [
            Detections(
                torch.tensor([[1.0, 2.0, 30.0, 40.0], [0.0, 0.0, 5.0, 5.0]]),
                torch.tensor([0.9, 0.1]),
                torch.tensor([2, 3]),
            )
            for _ in range(len(pixel_values))
        ]

    predictor = Predictor(
        backend, ["a", "b", "c", "d"], InputSpec((64, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), batch_size=3
    )
    run = predict(predictor, [kit.val_images], tmp_path / "out", threshold=0.5, progress=False)
    assert calls[0] == ((3, 3, 64, 32), [[96, 96]] * 3) and len(calls) == 3
    records = json.loads(run.results_json.read_text())
    assert len(records) == 8
    assert records[0] == {"image_id": 1, "category_id": 2, "bbox": [1.0, 2.0, 29.0, 38.0], "score": 0.9}
    pixels, sizes = predictor.preprocess([torch.full((3, 10, 20), 255, dtype=torch.uint8)])
    assert pixels.shape == (1, 3, 64, 32) and torch.allclose(pixels, torch.ones_like(pixels))
    assert sizes.tolist() == [[10, 20]]


def test_a_damaged_onnx_file_is_a_clear_error(kit, tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not really")
    with pytest.raises(CheckpointError, match="model.onnx"):
        predict(fake, [kit.val_images], tmp_path / "out")


def test_boxes_are_clipped_to_the_image(kit, tmp_path):
    def backend(pixel_values, orig_sizes):  # the original post-processor's boxes run past the edges
        boxes = torch.tensor([[-10.0, -15.9, 30.0, 200.0]])
        return [Detections(boxes, torch.tensor([0.9]), torch.tensor([1])) for _ in range(len(pixel_values))]

    predictor = Predictor(backend, ["a", "b", "c", "d"], (64, 64))
    run = predict(predictor, [kit.val_images / "000000.png"], tmp_path / "out", threshold=0.5, progress=False)
    [record] = json.loads(run.results_json.read_text())
    assert record["bbox"] == [0.0, 0.0, 30.0, 96.0]  # the 96 x 96 image's edges


def test_nms_merges_duplicates_of_a_class_only_when_asked(kit, tmp_path):
    def backend(pixel_values, orig_sizes):
        boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0], [11.0, 11.0, 51.0, 51.0], [10.0, 10.0, 50.0, 50.0]])
        scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 1, 2])  # a duplicate, and another class
        return [Detections(boxes, scores, labels) for _ in range(len(pixel_values))]

    image = [kit.val_images / "000000.png"]
    kept = predict(Predictor(backend, ["a", "b", "c"], (64, 64)), image, None, threshold=0.5, progress=False)
    assert len(kept.predictions[0].detections) == 3  # off by default: mAP files keep every box
    merged = predict(Predictor(backend, ["a", "b", "c"], (64, 64)), image, None, threshold=0.5, nms=0.5, progress=False)
    det = merged.predictions[0].detections
    assert det.labels.tolist() == [1, 2] and det.scores.tolist() == pytest.approx([0.9, 0.7])


def test_the_python_api_predicts_typed_detections_in_original_pixels(kit):
    import defectfusion
    from defectfusion.data.images import load_image

    predictor = defectfusion.Predictor.from_checkpoint(kit.fused, threshold=0.0)
    [det] = predictor([load_image(kit.val_images / "000000.png")])
    assert isinstance(det, defectfusion.Detections) and len(det) > 0
    assert det.boxes.min() >= 0 and det.boxes[:, [0, 2]].max() <= 96 and det.boxes[:, [1, 3]].max() <= 96
    assert (det.scores[:-1] >= det.scores[1:]).all()
