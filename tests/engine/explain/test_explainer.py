"""explain: similarity maps at the image's size that differ between classes; per-detection matches; files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from defectfusion.commands.explain import explain
from defectfusion.data.images import load_image
from defectfusion.engine.explain.explainer import explain_image
from defectfusion.errors import CheckpointError, ConfigError
from defectfusion.models.checkpoint import load_detector
from defectfusion.report.explain import write_explanation


def _image_with_two_classes(kit) -> tuple[str, list[int]]:
    data = json.loads(kit.val_ann.read_text())
    labels = {c["id"]: i for i, c in enumerate(data["categories"])}
    for im in data["images"]:
        present = sorted({labels[a["category_id"]] for a in data["annotations"] if a["image_id"] == im["id"]})
        if len(present) >= 2:
            return str(kit.val_images / im["file_name"]), present
    raise AssertionError("the synthetic val set has no image with two classes")


def test_maps_have_the_image_size_and_differ_between_the_classes_present(kit):
    model = load_detector(kit.fused)
    path, present = _image_with_two_classes(kit)
    expl = explain_image(model, path, threshold=0.0, max_detections=5)
    C = len(model.class_names)
    assert expl.maps.shape == (C, 96, 96) and expl.size == (96, 96)
    assert torch.isfinite(expl.maps).all() and expl.maps.abs().max() <= 1.0
    a, b = present[:2]
    assert (expl.maps[a] - expl.maps[b]).abs().max() > 1e-3
    for m in expl.maps:  # a map, not a constant: it varies over the image
        assert m.std() > 1e-4
    assert [tuple(m.shape) for m in expl.level_maps] == [(C, 6, 6), (C, 3, 3)]
    assert expl.map_head == "model.model.enc_score_head.fusion"
    # the maps are the cosine similarity of the projected features: recompute level 0 by hand
    head = model.model.enc_score_head.fusion
    pixels = load_image(path).float().div(255)[None]
    with torch.no_grad():
        fmap = model(pixel_values=pixels).encoder_last_hidden_state[0]
        feats = model.model.enc_output(model.model.decoder_input_proj[0](fmap).flatten(2).transpose(1, 2))
        proj = torch.nn.functional.normalize(head.proj(feats), dim=-1)[0]
        expected = (proj @ head.text_embeddings.t()).t().reshape(C, 6, 6)
    torch.testing.assert_close(expl.level_maps[0], expected, atol=1e-5, rtol=1e-5)


def test_non_square_images_keep_their_size(kit, tmp_path):
    model = load_detector(kit.fused)
    path, _ = _image_with_two_classes(kit)
    with Image.open(path) as im:
        im.crop((0, 10, 90, 70)).resize((150, 60)).save(tmp_path / "wide.png")
    expl = explain_image(model, tmp_path / "wide.png", threshold=0.0, max_detections=3)
    assert expl.maps.shape == (6, 60, 150) and expl.size == (60, 150)
    for d in expl.detections:
        assert 0 <= d.box[0] <= d.box[2] <= 150 and 0 <= d.box[1] <= d.box[3] <= 60


def test_each_detection_reports_its_similarity_to_every_class_text(kit):
    model = load_detector(kit.fused)
    path, _ = _image_with_two_classes(kit)
    expl = explain_image(model, path, threshold=0.0, max_detections=4)
    assert len(expl.detections) == 4
    scores = [d.score for d in expl.detections]
    assert scores == sorted(scores, reverse=True)
    queries = {d.query for d in expl.detections}
    for d in expl.detections:
        assert len(d.similarity) == 6 and all(-1.0 <= v <= 1.0 for v in d.similarity)
        top = d.top_matches(expl.class_names)
        assert [v for _, v in top] == sorted(d.similarity, reverse=True)
    # the query features are what the decoder's evaluation-layer class head scored
    head = model.model.decoder.class_embed[-1].fusion
    captured = []
    hook = model.model.decoder.class_embed[-1].register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        model(pixel_values=load_image(path).float().div(255)[None])
    hook.remove()
    for d in expl.detections:
        expected = head.similarity(captured[-1][0, d.query])
        torch.testing.assert_close(torch.tensor(d.similarity), expected, atol=1e-5, rtol=1e-5)
    assert len(queries) >= 1 and expl.query_head == "model.model.decoder.class_embed[1].fusion"


def test_without_query_selection_fusion_the_decoder_head_is_used_and_said(kit):
    expl = explain_image(load_detector(kit.fused_decoder_only), _image_with_two_classes(kit)[0], threshold=0.2)
    assert expl.map_head == "model.model.decoder.class_embed[1].fusion"
    assert "approximation" in expl.map_head_note and expl.maps.shape == (6, 96, 96)


def test_files_hold_the_numbers_and_real_pngs(kit, tmp_path):
    path, _ = _image_with_two_classes(kit)
    [item] = explain(kit.fused, path, tmp_path / "ex", threshold=0.0, max_detections=3).images
    expl, files = item.explanation, item.files
    data = json.loads(files.json.read_text())
    assert data["image_size"] == {"height": 96, "width": 96} and data["classes"] == expl.class_names
    assert data["maps"]["head"] == "model.model.enc_score_head.fusion"
    level0 = data["maps"]["levels"][0]
    assert (level0["height"], level0["width"]) == (6, 6)
    np.testing.assert_allclose(np.array(level0["similarity"]["NORMAL"]), expl.level_maps[0][0].numpy(), atol=1e-5)
    assert sum(data["maps"]["best_class_share"].values()) == pytest.approx(1.0, abs=1e-4)
    items = data["detections"]["items"]
    assert len(items) == 3 and items[0]["class"] == expl.detections[0].class_name
    assert items[0]["top_matches"][0][1] == max(items[0]["similarity"].values())
    with np.load(files.npz) as saved:
        np.testing.assert_allclose(saved["maps"], expl.maps.numpy())
        assert list(saved["classes"]) == expl.class_names
    for png in (files.maps_png, files.matches_png):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 800 and im.height > 400
            pixels = np.asarray(im.convert("RGB"))
            assert pixels.std() > 20  # a picture, not a blank canvas
    # the per-class maps figure shows distinct panels for distinct classes
    assert files.maps_png.stat().st_size > 50_000


def test_no_detection_still_gives_maps_and_a_note(kit, tmp_path):
    path, _ = _image_with_two_classes(kit)
    expl = explain_image(load_detector(kit.fused), path, threshold=1.0)
    assert expl.detections == [] and expl.maps.shape == (6, 96, 96)
    files = write_explanation(expl, tmp_path)
    assert json.loads(files.json.read_text())["detections"]["items"] == []
    with Image.open(files.matches_png) as im:
        assert im.format == "PNG"


def test_explain_needs_a_fused_pytorch_model(kit, tmp_path):
    path, _ = _image_with_two_classes(kit)
    with pytest.raises(ConfigError, match="no text-fusion head"):
        explain(kit.baseline, path, tmp_path / "x")
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"onnx")
    with pytest.raises(CheckpointError, match="explain needs the PyTorch detector folder"):
        explain(fake, path, tmp_path / "x")
    with pytest.raises(ConfigError, match=r"threshold must be in \[0, 1\]"):
        explain(kit.fused, path, tmp_path / "x", threshold=2.0)
    assert not (tmp_path / "x").exists()


def test_the_text_term_map_is_what_the_head_adds_with_the_gates_sign(kit):
    """``text_term = g * (exp(s) * cosine + beta)`` place by place: with a negative gate its ranking of places is the
    cosine's reversed. Fails if the gate's sign, the scale or the bias were left out (the map would equal, or be a
    positive multiple of, the similarity map)."""
    model = load_detector(kit.fused)
    path, _ = _image_with_two_classes(kit)
    head = model.model.enc_score_head.fusion if hasattr(model.model.enc_score_head, "fusion") else None
    head = head or model.model.decoder.class_embed[-1].fusion
    with torch.no_grad():
        for h in model.fusion_heads():
            h.gate.fill_(-0.5)
    expl = explain_image(model, path, threshold=0.0, max_detections=1, attribution=False)
    scale = head.logit_scale.detach().exp()
    expected = -0.5 * (scale * expl.maps + head.logit_bias.detach())
    torch.testing.assert_close(expl.class_maps["text_term"], expected)
    for c in range(len(model.class_names)):
        assert int(expl.class_maps["text_term"][c].argmax()) == int(expl.maps[c].argmin())
    selection = hasattr(model.model.enc_score_head, "fusion")  # which head computed it decides what it explains
    assert ("an explanation of query selection" in expl.map_kinds["text_term"]) == selection
    assert ("descriptive, not an explanation" in expl.map_kinds["text_term"]) != selection


def test_the_boxes_control_is_the_class_queries_boxes_as_score_weighted_gaussians(kit):
    """The control, recomputed here from the model's own outputs: per class its best queries (those scoring at
    least the threshold, at most five, else the best one), each box a Gaussian of sd a quarter of its sides, peak
    its score. Fails if the control drew other queries, other boxes or unweighted blobs."""
    from defectfusion.models.inference import InputSpec, prepare_images

    model = load_detector(kit.fused).eval()
    path, _ = _image_with_two_classes(kit)
    threshold = 0.05
    expl = explain_image(model, path, threshold=threshold, max_detections=3)
    pixels, _ = prepare_images([load_image(path).as_subclass(torch.Tensor)], InputSpec.of(model.meta))
    with torch.no_grad():
        out = model(pixel_values=pixels)
    scores, boxes = out.logits[0].sigmoid().double(), out.pred_boxes[0].double()
    ys, xs = np.mgrid[0:96, 0:96] + 0.5
    for c in range(scores.shape[1]):
        order = torch.argsort(scores[:, c], descending=True)
        chosen = [int(q) for q in order[:5] if scores[q, c] >= threshold] or [int(order[0])]
        reference = np.zeros((96, 96))
        for q in chosen:
            cx, cy, w, h = (boxes[q] * torch.tensor([96, 96, 96, 96])).tolist()
            sx, sy = max(w / 4, 0.5), max(h / 4, 0.5)
            reference += float(scores[q, c]) * np.exp(-0.5 * (((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2))
        np.testing.assert_allclose(expl.class_maps["boxes"][c].numpy(), reference, rtol=1e-4, atol=1e-5)
