"""Letterbox: aspect kept, padded bottom-right; boxes map back onto themselves; the model remembers it."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from defectfusion.data.transforms import Letterbox, build_eval_transform, content_size
from defectfusion.models.inference import InputSpec, postprocess_sizes, to_original
from defectfusion.structures import Detections


@pytest.mark.parametrize("orig", [(300, 517), (911, 203), (64, 64)], ids=["landscape", "portrait", "square"])
@pytest.mark.parametrize("model_size", [(256, 256), (192, 320)])
def test_boxes_through_the_letterbox_land_on_themselves(orig, model_size):
    gen = torch.Generator().manual_seed(0)
    height, width = orig
    xy = torch.rand(20, 2, generator=gen) * torch.tensor([width * 0.8, height * 0.8])
    wh = torch.rand(20, 2, generator=gen) * torch.tensor([width * 0.2, height * 0.2]) + 1
    boxes = torch.cat([xy, xy + wh], 1)
    image = tv_tensors.Image(torch.randint(0, 255, (3, height, width), dtype=torch.uint8, generator=gen))
    target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=orig)}
    out, moved = Letterbox(model_size)(image, target)
    assert tuple(out.shape[-2:]) == model_size
    content_h, content_w = content_size(orig, model_size, "letterbox")
    assert abs(content_h / height - content_w / width) < 2 / min(height, width) + 0.01  # aspect kept
    assert (content_h == model_size[0]) or (content_w == model_size[1])  # fits on one side
    assert out[:, content_h:, :].sum() == 0 and out[:, :, content_w:].sum() == 0  # padding bottom-right
    # what the post-processor gives for these boxes at the model size, mapped back
    sizes = postprocess_sizes(torch.tensor([orig]), InputSpec(model_size, resize="letterbox"))
    assert sizes.tolist() == [list(model_size)]
    found = Detections(moved["boxes"].as_subclass(torch.Tensor).float(), torch.ones(20), torch.zeros(20).long())
    back = to_original(found, orig, InputSpec(model_size, resize="letterbox")).boxes
    assert (back - boxes).abs().max() < 0.5


def test_the_plain_resize_is_the_default_and_maps_nothing():
    assert isinstance(build_eval_transform(64), type(build_eval_transform(64, "plain")))
    found = Detections(torch.tensor([[1.0, 2, 3, 4]]), torch.ones(1), torch.zeros(1).long())
    assert to_original(found, (100, 50), InputSpec((64, 64))) is found
    with pytest.raises(ValueError, match="resize must be one of"):
        build_eval_transform(64, "crop")


def test_a_model_trained_with_letterbox_predicts_evaluates_and_exports_with_it(tmp_path, synth_data):
    from defectfusion.cli import main
    from defectfusion.commands.evaluate import evaluate_checkpoint
    from defectfusion.engine.prediction.predictor import Predictor
    from defectfusion.models.checkpoint import load_detector
    from tests.helpers import write_train_config

    # a non-square copy of the validation split: letterbox matters there
    wide = tmp_path / "wide"
    (wide / "images").mkdir(parents=True)
    data = json.loads((synth_data / "val" / "annotations.json").read_text())
    for record in data["images"][:6]:
        src = synth_data / "val" / "images" / record["file_name"]
        Image.open(src).convert("RGB").resize((record["width"] * 2, record["height"])).save(
            wide / "images" / record["file_name"]
        )
        record["width"] *= 2
    kept = {r["id"] for r in data["images"][:6]}
    data["images"] = data["images"][:6]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    for a in data["annotations"]:
        a["bbox"] = [a["bbox"][0] * 2, a["bbox"][1], a["bbox"][2] * 2, a["bbox"][3]]
        a["area"] = a["bbox"][2] * a["bbox"][3]
    (wide / "annotations.json").write_text(json.dumps(data))

    cfg = write_train_config(tmp_path / "cfg.yml", synth_data, order=["baseline"], model={"resize": "letterbox"})
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    final = tmp_path / "run" / "final"
    model = load_detector(final)
    assert model.meta.resize == "letterbox"  # remembered: nothing below repeats the option
    predictor = Predictor.from_checkpoint(final, threshold=0.0)
    assert predictor.spec.resize == "letterbox"
    image = wide / "images" / data["images"][0]["file_name"]
    [det] = model.predict(image, threshold=0.0)
    [pred] = list(predictor.predict_files([image]))
    torch.testing.assert_close(det.boxes, pred.detections.boxes)
    assert det.boxes[:, 0::2].max() <= 192 and det.boxes[:, 1::2].max() <= 96
    result = evaluate_checkpoint(final, wide / "annotations.json", report=False, progress=False)
    assert 0.0 <= result.metrics.map50 <= 1.0

    pytest.importorskip("onnxruntime")
    from defectfusion.commands.export import export_onnx
    from defectfusion.engine.prediction.onnx_backend import OnnxDetector

    # A one-epoch model's query-selection scores are still all equal (its class head sits at the
    # prior), so which queries onnxruntime and PyTorch keep is arbitrary: parity is checked on the
    # kit's model below; here the file must carry the resize and its predictions use it.
    export_onnx(final, tmp_path / "trained.onnx", check=False)
    assert OnnxDetector(tmp_path / "trained.onnx").resize == "letterbox"
    [via_onnx] = list(Predictor.from_checkpoint(tmp_path / "trained.onnx", threshold=0.0).predict_files([image]))
    boxes = via_onnx.detections.boxes
    assert len(boxes) and boxes[:, 0::2].max() <= 192 and boxes[:, 1::2].max() <= 96


def test_an_exported_letterbox_model_reads_its_resize_and_predicts_like_pytorch(kit, tmp_path):
    pytest.importorskip("onnxruntime")
    from defectfusion.cli import main
    from defectfusion.engine.prediction.onnx_backend import OnnxDetector
    from defectfusion.engine.prediction.predictor import Predictor
    from defectfusion.models.checkpoint import load_detector, save_detector

    model = load_detector(kit.baseline)
    model.set_image_size(None, "letterbox")
    save_detector(model, tmp_path / "letterboxed")
    image = tmp_path / "wide.png"
    first = sorted((kit.data / "val" / "images").iterdir())[0]
    Image.open(first).convert("RGB").resize((192, 96)).save(image)

    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "letterboxed"), "--out", str(onnx_file)]) == 0
    assert OnnxDetector(onnx_file).resize == "letterbox"  # not repeated: read from the file
    [pred] = list(Predictor.from_checkpoint(tmp_path / "letterboxed", threshold=0.0).predict_files([image]))
    [via_onnx] = list(Predictor.from_checkpoint(onnx_file, threshold=0.0).predict_files([image]))
    torch.testing.assert_close(via_onnx.detections.scores, pred.detections.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(via_onnx.detections.boxes, pred.detections.boxes, atol=1e-2, rtol=0)
    assert pred.detections.boxes[:, 0::2].max() <= 192 and pred.detections.boxes[:, 1::2].max() <= 96


def test_explanation_maps_of_a_letterbox_model_cover_the_image_not_the_padding(kit, tmp_path):
    from defectfusion.engine.explain.explainer import explain_image
    from defectfusion.models.checkpoint import load_detector

    model = load_detector(kit.fused)
    first = sorted((kit.data / "val" / "images").iterdir())[0]
    wide = torch.from_numpy(__import__("numpy").array(Image.open(first).convert("RGB").resize((192, 96))))
    plain = explain_image(model, wide.permute(2, 0, 1).contiguous(), threshold=0.0, attribution=False)
    model.set_image_size(None, "letterbox")
    boxed = explain_image(model, wide.permute(2, 0, 1).contiguous(), threshold=0.0, attribution=False)
    for exp in (plain, boxed):
        assert tuple(exp.maps.shape[-2:]) == (96, 192)
        assert all(0 <= d.box[0] <= d.box[2] <= 192.5 and d.box[3] <= 96.5 for d in exp.detections)
    # the letterboxed input is another picture of the same image: the maps differ from the stretched one's
    assert not torch.allclose(plain.maps, boxed.maps)
