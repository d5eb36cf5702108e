"""What an exported file says about itself: enough to feed it and read it without defectfusion."""

from __future__ import annotations

import json

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.engine.export.onnx_metadata import onnx_metadata
from defectfusion.engine.prediction.onnx_backend import FORMAT_KEY, ONNX_FORMAT
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings


def test_the_metadata_names_classes_input_and_preprocessing_for_each_resize():
    plain = build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(64, 96)), ["crack", "scratch"])
    meta = onnx_metadata(plain, (64, 96), 2, 17, 300)
    assert meta[FORMAT_KEY] == ONNX_FORMAT and json.loads(meta["class_names"]) == ["crack", "scratch"]
    assert json.loads(meta["image_size"]) == [64, 96] and meta["orig_target_sizes"] == "H,W"
    assert (meta["batch"], meta["opset"], meta["top_k"], meta["fused"]) == ("2", "17", "300", "false")
    assert "without keeping the aspect ratio" in meta["preprocessing"] and json.loads(meta["fusion"]) is None
    assert all(isinstance(v, str) for v in meta.values())  # ONNX metadata_props hold strings only

    plain.set_image_size(None, "letterbox")
    fused = add_fusion(plain, FusionConfig(), random_text_embeddings(2, 8, 0), encoder="file:e", descriptions="d")
    meta = onnx_metadata(fused, (64, 96), "dynamic", 17, 300)
    assert meta["resize"] == "letterbox" and "keeping the aspect ratio, pad bottom/right" in meta["preprocessing"]
    assert json.loads(meta["fusion"])["encoder"] == "file:e" and meta["fused"] == "true"
