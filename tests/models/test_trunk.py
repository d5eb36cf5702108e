"""The trunk: what a cached output depends on, and a forward that starts from it."""

from __future__ import annotations

import pytest
import torch

from defectfusion.config import ModelConfig
from defectfusion.models.detector import build_detector
from defectfusion.models.trunk import trunk_features, trunk_fingerprint, trunk_variability

SIZE = (64, 64)


def _model(names=("a", "b"), semantics="original", **overrides):
    torch.manual_seed(0)
    config = ModelConfig(preset="dinov3_micro", image_size=SIZE, semantics=semantics, overrides=overrides)
    return build_detector(config, list(names))


def test_the_fingerprint_follows_the_trunks_weights_and_statistics_not_the_class_names():
    model = _model()
    other_classes = _model(names=("x", "y", "z"))
    other_classes.model.conv_encoder.load_state_dict(model.model.conv_encoder.state_dict())
    other_classes.model.encoder.load_state_dict(model.model.encoder.state_dict())
    assert trunk_fingerprint(other_classes) == trunk_fingerprint(model)

    with torch.no_grad():
        next(model.model.decoder.parameters()).add_(1.0)  # after the trunk: nothing it computes changes
    assert trunk_fingerprint(model) == trunk_fingerprint(other_classes)
    bn = next(m for m in model.model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.add_(0.5)
    assert trunk_fingerprint(model) != trunk_fingerprint(other_classes)


def test_randomness_in_the_trunk_is_named():
    assert trunk_variability(_model()) == []
    reasons = trunk_variability(_model(dropout=0.1))
    assert reasons and all("dropout=0.1" in r and "random in training" in r for r in reasons)
    assert "eval_size" in trunk_variability(_model(semantics="transformers", eval_size=SIZE))[0]


def test_a_forward_from_the_trunks_output_is_the_forward_from_pixels():
    model = _model().eval()
    pixels = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        maps = trunk_features(model, pixels)
        from_pixels = model(pixel_values=pixels)
        from_maps = model(trunk_features=maps)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 8, 8), (2, 64, 4, 4), (2, 64, 2, 2)]
    assert torch.equal(from_maps.logits, from_pixels.logits)
    assert torch.equal(from_maps.pred_boxes, from_pixels.pred_boxes)
    # the trunk computes again once the maps are used
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).logits, from_pixels.logits)
    with pytest.raises(ValueError, match="not both"):
        model(pixel_values=pixels, trunk_features=maps)
