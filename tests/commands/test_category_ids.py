"""A model remembers its dataset's COCO category ids: predictions without --annotations carry them,
and scoring those predictions equals evaluating the checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest

from defectfusion.cli import main
from defectfusion.commands.evaluate import evaluate_checkpoint, evaluate_predictions
from defectfusion.commands.predict import predict
from defectfusion.models.checkpoint import load_detector

IDS = [3, 5, 7, 11, 13, 17]  # neither 0-based nor contiguous


def _renumbered(src, dst):
    shutil.copytree(src, dst)
    for split in ("train", "val"):
        path = dst / split / "annotations.json"
        data = json.loads(path.read_text())
        old = {c["id"]: IDS[i] for i, c in enumerate(data["categories"])}
        for c in data["categories"]:
            c["id"] = old[c["id"]]
        for a in data["annotations"]:
            a["category_id"] = old[a["category_id"]]
        path.write_text(json.dumps(data))
    return dst


def test_predictions_carry_the_training_datasets_ids(tmp_path, synth_data):
    data = _renumbered(synth_data, tmp_path / "data")
    # the documented from-scratch recipe with its shorthand flags, as the README gives it
    argv = [
        "train", "scratch_cpu", "--out", str(tmp_path / "run"), "--quiet",
        "-o", f"data.train.annotations={data / 'train' / 'annotations.json'}",
        "-o", f"data.val.annotations={data / 'val' / 'annotations.json'}",
        "--epochs", "2", "--image-size", "96", "--batch-size", "4", "--threads", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    model = tmp_path / "run" / "final"
    assert load_detector(model).meta.category_ids == IDS

    images = data / "val" / "images"
    result = predict(model, [images], tmp_path / "pred", threshold=0.0, draw=False, progress=False)
    records = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert result.category_ids == IDS and records and {r["category_id"] for r in records} <= set(IDS)
    # the synthetic images are numbered 1.. in file order, as predict numbers them without annotations
    scored = evaluate_predictions(tmp_path / "pred" / "results.json", data / "val" / "annotations.json", report=False)
    direct = evaluate_checkpoint(model, data / "val" / "annotations.json", report=False, progress=False)
    assert direct.metrics.map50 > 0
    assert abs(scored.metrics.map50 - direct.metrics.map50) < 1e-6
    assert abs(scored.metrics.map - direct.metrics.map) < 1e-6

    # the Python API gives the same detections for the first image, in its pixels, with the same ids
    detector = load_detector(model)
    first = sorted(images.iterdir())[0]
    [det] = detector.predict(first, threshold=0.0)
    mine = [r for r in records if r["image_id"] == 1]
    assert len(mine) == len(det)
    x, y, w, h = mine[0]["bbox"]
    assert det.boxes[0].tolist() == pytest.approx([x, y, x + w, y + h], abs=1e-3)
    assert [detector.meta.category_ids[int(label)] for label in det.labels] == [r["category_id"] for r in mine]
