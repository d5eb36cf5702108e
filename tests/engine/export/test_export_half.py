"""FP16 export: its mAP check prepares images as the model does, label agreement, and the map-drop refusal."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from defectfusion.cli import main  # noqa: E402
from defectfusion.data.coco import load_coco  # noqa: E402
from defectfusion.engine.evaluation import validation  # noqa: E402
from defectfusion.engine.export import export as export_engine  # noqa: E402
from defectfusion.engine.export.export import export_model  # noqa: E402
from defectfusion.engine.export.export_half import (  # noqa: E402
    MIN_SCORE,
    HalfReport,
    agreement,
    check_half,
    halve_initializers,
)
from defectfusion.engine.prediction.predictor import Predictor  # noqa: E402
from defectfusion.models.checkpoint import load_detector, save_detector  # noqa: E402
from defectfusion.models.inference import InputSpec  # noqa: E402
from defectfusion.structures import Detections, Metrics  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def wide_images(kit, folder: Path, count: int = 6) -> tuple[Path, dict]:
    """The first validation images stretched to twice their width (letterbox and stretch differ there)."""
    (folder / "images").mkdir(parents=True)
    data = json.loads(kit.val_ann.read_text())
    data["images"] = data["images"][:count]
    for record in data["images"]:
        source = kit.val_images / record["file_name"]
        size = (record["width"] * 2, record["height"])
        Image.open(source).convert("RGB").resize(size).save(folder / "images" / record["file_name"])
        record["width"] *= 2
    return folder, data


def with_area(det: Detections) -> Detections:
    """The detections with a box: those the model puts in the letterbox padding are clipped to the image
    edge, flat, and no IoU says whether two flat boxes are the same."""
    keep = (det.boxes[:, 2] > det.boxes[:, 0]) & (det.boxes[:, 3] > det.boxes[:, 1])
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep])


def own_detections_as_truth(model, folder: Path, data: dict) -> Path:
    """A COCO file whose ground truth is the float32 model's own confident detections (letterboxed as the
    model does): the model scores a high mAP@0.5 on it (below 1 only by the flat boxes it puts in the padding,
    false positives among its own), so other preprocessing or weights can only lose."""
    index_ids = [r["id"] for r in data["images"]]
    paths = [folder / "images" / r["file_name"] for r in data["images"]]
    predictions = list(Predictor.from_model(model).predict_files(paths, index_ids, progress=False))
    found = {p.image_id: with_area(p.detections) for p in predictions}
    scores = torch.cat([d.scores for d in found.values()]).sort(descending=True).values
    ranks = scores[len(predictions) : 4 * len(predictions)]  # 1 to 4 per image
    gap = int((ranks[:-1] - ranks[1:]).argmax())
    cut = float(ranks[gap] + ranks[gap + 1]) / 2  # in the widest gap: no rounding moves a detection across
    categories = [c["id"] for c in data["categories"]]
    annotations = []
    for image_id, det in found.items():
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
            if score >= cut:
                x1, y1, x2, y2 = box
                bbox = [x1, y1, x2 - x1, y2 - y1]
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "category_id": categories[label],
                     "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
                )  # fmt: skip
    out = folder / "own.json"
    out.write_text(json.dumps({**data, "annotations": annotations}))
    return out


@pytest.fixture(scope="module")
def letterboxed(kit, tmp_path_factory):
    """A letterbox model, wide images and a COCO file of its own detections on them."""
    folder = tmp_path_factory.mktemp("half")
    model = load_detector(kit.fused)
    model.set_image_size(None, "letterbox")
    save_detector(model, folder / "letterboxed")
    images, data = wide_images(kit, folder / "wide")
    return model, folder / "letterboxed", own_detections_as_truth(model, images, data)


def test_the_float16_check_scores_a_letterbox_model_on_letterboxed_images(letterboxed, tmp_path, monkeypatch):
    """Checked to fail with the float16 predictor built without ``resize=`` (the old code): its
    predictor says plain, and its detections on the wide images are not the float32 ones."""
    model, _, truth = letterboxed
    runs = {}
    real = validation.evaluate_on_index

    def spy(predictor, index, **kwargs):
        ids = [r.id for r in index.images]
        metrics, kept = real(predictor, index, **{**kwargs, "keep": ids})
        runs[kwargs["desc"]] = (predictor, metrics, kept)
        return metrics, kept

    monkeypatch.setattr(validation, "evaluate_on_index", spy)
    result = export_model(model, tmp_path / "half.onnx", half=True, check_index=load_coco(truth), threads=1)
    assert set(runs) == {"float32", "float16"}
    fp32, fp16 = runs["float32"][0], runs["float16"][0]
    # both runs prepare every image as the model does: the same size, resize and normalisation
    assert fp32.spec == fp16.spec == InputSpec.of(model.meta) and fp32.spec.resize == "letterbox"
    assert fp32.model is not None and fp16.model is None  # PyTorch float32 vs the float16 graph
    # the two runs' detections on the wide images are the same detections (weights rounded, nothing else)
    same = HalfReport()
    for image_id, want in runs["float32"][2].items():
        agreement([with_area(want)], [with_area(runs["float16"][2][image_id])], same)
    assert same.compared > 20 and same.label_agreement >= 0.95, same.summary()
    # and the report compares those two runs: float32 scores high on its own detections, float16 as much
    report = result.half
    assert report.map50_fp32 == runs["float32"][1].map50 and report.map50_fp16 == runs["float16"][1].map50
    assert report.map50_fp32 > 0.8 and abs(report.map_drop) <= 0.01 and report.ok, report.summary()


def test_stretched_images_would_have_cost_the_letterbox_model_its_map(letterboxed):
    """The control of the test above: on these images the resize matters, so scoring the float16 graph
    on stretched images (the old check) is no measure of its rounding."""
    model, _, truth = letterboxed
    index = load_coco(truth)
    boxed, _ = validation.evaluate_on_index(Predictor.from_model(model), index, progress=False)
    stretched, _ = validation.evaluate_on_index(
        Predictor.from_model(model, spec=replace(InputSpec.of(model.meta), resize="plain")), index, progress=False
    )
    assert boxed.map50 > 0.8 and stretched.map50 < boxed.map50 - 0.3


def test_label_agreement_counts_the_float32_detections_found_in_float16():
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    want = Detections(
        torch.cat([box, box + 100, box + 200, box + 300]),
        torch.tensor([0.75, 0.5, 0.25, MIN_SCORE / 2]),  # the last is below MIN_SCORE: not compared
        torch.tensor([1, 2, 0, 1]),
    )
    got = Detections(
        torch.cat([box + 200, box + 100.5, box + 100, box + 300]),
        torch.tensor([0.265625, 0.46875, 0.625, 0.02]),  # dyadic: the differences are exact
        torch.tensor([0, 2, 1, 1]),
    )
    report = HalfReport()
    agreement([want], [got], report)
    # 0.75 (label 1) has no box in float16; 0.5 (label 2) is the box moved by 0.5 px (IoU 39.5^2 / (2 * 40^2 -
    # 39.5^2) = 0.95 >= 0.9), not the exact box relabelled 1; 0.25 (label 0) its own box: 2 of 3
    assert report.compared == 3 and report.agreeing == 2
    assert report.label_agreement == pytest.approx(2 / 3)
    assert report.max_score_diff == 0.03125  # |0.46875 - 0.5|, above |0.265625 - 0.25|
    moved = Detections(box + 102.5, torch.tensor([0.5]), torch.tensor([2]))  # IoU 37.5^2 / (2 * 40^2 - 37.5^2) = 0.78
    agreement([want], [moved], report)
    assert report.compared == 6 and report.agreeing == 2
    agreement([want], [Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))], report)
    assert report.compared == 9 and report.agreeing == 2  # an empty float16 result agrees with nothing
    assert HalfReport().label_agreement == 1.0  # nothing to compare: nothing disagrees


def test_a_map_drop_beyond_the_bound_is_a_problem_and_at_it_is_not():
    # dyadic numbers: the drop 0.75 - 0.5 = 0.25 is exact
    at_bound = HalfReport(max_map_drop=0.25)
    check_half(at_bound, Metrics(0.75, None), Metrics(0.5, None))
    assert at_bound.map_drop == 0.25 and at_bound.ok and "drop +0.2500 (bound 0.25)" in at_bound.summary()
    beyond = HalfReport(max_map_drop=0.125)
    check_half(beyond, Metrics(0.75, None), Metrics(0.5, None))
    assert not beyond.ok and beyond.problems == ["mAP@0.5 drops by 0.2500 with float16 weights, beyond the bound 0.125"]
    better = HalfReport(max_map_drop=0.0)
    check_half(better, Metrics(0.5, None), Metrics(0.75, None))  # float16 scoring higher is no problem
    assert better.ok and better.map_drop == -0.25
    unscored = HalfReport()
    check_half(unscored, None, None)  # no COCO file: label agreement only
    assert unscored.ok and unscored.map_drop is None and "mAP" not in unscored.summary()


def coarse_halving(path) -> int:
    """The float16 rewrite, then every float16 weight rounded to a power of two: a graph that really loses mAP."""
    import onnx
    from onnx import numpy_helper

    count = halve_initializers(path)
    model = onnx.load(str(path))
    for i, init in enumerate(model.graph.initializer):
        if init.name.endswith("__fp16"):
            bits = numpy_helper.to_array(init).view(np.uint16) & np.uint16(0xFC00)  # sign and exponent only
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(bits.view(np.float16), init.name))
    onnx.save(model, str(path))
    return count


def test_cli_refuses_a_float16_export_whose_map_drops_beyond_max_map_drop(letterboxed, tmp_path, monkeypatch, capsys):
    _, checkpoint, truth = letterboxed
    monkeypatch.setattr(export_engine, "halve_initializers", coarse_halving)
    out = tmp_path / "out" / "half.onnx"
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--half", "--check-data", str(truth)]
    code = main([*args, "--max-map-drop", "0.01", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 2, captured
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: float16 export refused, nothing written to {out}: mAP@0.5 drops by ")
    assert err.endswith("with float16 weights, beyond the bound 0.01")
    assert not out.exists() and list(out.parent.iterdir()) == []  # no temp file left either
    drop = float(err.split("drops by ")[1].split()[0])
    assert drop > 0.1  # the coarse graph loses much: the bound, not the graph, decides below
    # the same graph within a bound above its drop is written, and the drop printed
    assert main([*args, "--max-map-drop", "1", "--threads", "1"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert out.is_file() and f"drop +{drop:.4f} (bound 1.0)" in printed
