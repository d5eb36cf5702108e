"""The AIFI layer's 2-D sin-cos position embedding at non-square feature maps: the original DEIMv2's.

The original (RT-DETR / D-FINE / DEIMv2 ``HybridEncoder``) calls
``build_2d_sincos_position_embedding(w, h, hidden_dim, pe_temperature)`` with ``h, w`` the feature
map's shape and adds it to the map flattened row by row. Its grid is meshed over (w, h) with "ij"
indexing, so on a non-square map its rows do not follow the flattened positions' (x, y): a quirk
every checkpoint of the original code was trained with. transformers' ``Deimv2SinePositionEmbedding``
lays it out by (y, x) instead; the two agree on square maps only. ``models/semantics.py`` (difference
7) puts the original back; these tests compare it with the formula at 24 x 40 and 40 x 24.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.deimv2.modeling_deimv2 import Deimv2SinePositionEmbedding

from defectfusion.config import ModelConfig
from defectfusion.models.detector import build_detector
from defectfusion.models.semantics import OriginalSinePositionEmbedding
from tests.helpers import SIX_CLASSES


def original_formula(w: int, h: int, embed_dim: int = 256, temperature: float = 10000.0) -> torch.Tensor:
    """``[1, w * h, embed_dim]``: the original code's ``build_2d_sincos_position_embedding``, step by step."""
    grid_w = torch.arange(int(w), dtype=torch.float32)
    grid_h = torch.arange(int(h), dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    pos_dim = embed_dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
    omega = 1.0 / (temperature**omega)
    out_w = grid_w.flatten()[..., None] @ omega[None]
    out_h = grid_h.flatten()[..., None] @ omega[None]
    return torch.concat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None, :, :]


def _detector(semantics: str = "original"):
    torch.manual_seed(0)
    return build_detector(ModelConfig(preset="dinov3_micro", image_size=(96, 160), semantics=semantics), SIX_CLASSES)


def _embedding_the_aifi_adds(aifi, feature_map: torch.Tensor) -> torch.Tensor:
    """Run the AIFI layer and catch the position embedding its first encoder layer is given."""
    caught = {}

    def hook(module, args, kwargs):
        caught["pos"] = kwargs["spatial_position_embeddings"]

    handle = aifi.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            aifi(feature_map)
    finally:
        handle.remove()
    return caught["pos"]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize(("height", "width"), [(24, 40), (40, 24)])
def test_the_aifi_adds_the_original_embedding_at_non_square_sizes(height, width, training):
    model = _detector().train(training)
    config = model.config
    aifi = model.model.encoder.aifi[0]
    assert isinstance(aifi.position_embedding, OriginalSinePositionEmbedding) and config.eval_size is None
    dim, temperature = config.encoder_hidden_dim, config.positional_encoding_temperature
    feature_map = torch.randn(2, dim, height, width)

    added = _embedding_the_aifi_adds(aifi, feature_map)

    expected = original_formula(width, height, dim, temperature)
    assert added.shape == expected.shape == (1, height * width, dim)
    torch.testing.assert_close(added, expected, rtol=0, atol=0)
    # the control: transformers' own layout is another embedding at this size (so the test can fail) ...
    theirs = Deimv2SinePositionEmbedding(dim, temperature)
    cpu, f32 = torch.device("cpu"), torch.float32
    assert (theirs(width=width, height=height, device=cpu, dtype=f32) - expected).abs().max() > 0.5
    # ... and the same one at a square size, where the two codes agree
    square = theirs(width=height, height=height, device=cpu, dtype=f32)
    torch.testing.assert_close(square, original_formula(height, height, dim, temperature), rtol=0, atol=1e-5)


def test_a_whole_forward_on_a_non_square_image_uses_the_original_layout():
    """96 x 160 pixels reach the AIFI as a 3 x 5 map (stride 32); ``semantics: transformers`` keeps
    transformers' layout there, which is not the original's."""
    image = torch.rand(1, 3, 96, 160)
    for semantics in ("original", "transformers"):
        model = _detector(semantics).eval()
        aifi = model.model.encoder.aifi[0]
        caught = {}

        def hook(module, args, kwargs, caught=caught):
            caught["pos"] = kwargs["spatial_position_embeddings"]

        handle = aifi.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        with torch.no_grad():
            model(pixel_values=image)
        handle.remove()
        dim, temperature = model.config.encoder_hidden_dim, model.config.positional_encoding_temperature
        expected = original_formula(5, 3, dim, temperature)
        assert caught["pos"].shape == (1, 15, dim)
        if semantics == "original":
            torch.testing.assert_close(caught["pos"], expected, rtol=0, atol=0)
        else:
            assert (caught["pos"] - expected).abs().max() > 0.5
