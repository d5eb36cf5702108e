"""Attribution maps: the model's own gradients point at a planted object; a blank image gives flat maps.

The kit's model is random, so its encoder mixes the whole image into every position (the AIFI
layer attends globally): only the pixel-level attribution can be expected to localise on it. The
memory-level kinds are checked for flatness here and measured on a trained model (benchmarks).
"""

from __future__ import annotations

import numpy as np
import torch

from defectfusion.engine.explain.explainer import explain_image
from defectfusion.models.checkpoint import load_detector

BOX = (52, 20, 76, 44)  # x1, y1, x2, y2 of the planted object in a 96 px image


def _planted(background: int = 90) -> np.ndarray:
    image = np.full((96, 96, 3), background, dtype=np.uint8)
    x1, y1, x2, y2 = BOX
    image[y1:y2, x1:x2] = (230, 40, 40)
    return image


def _argmax_xy(m: torch.Tensor) -> tuple[int, int]:
    y, x = np.unravel_index(int(m.argmax()), m.shape)
    return int(x), int(y)


def test_the_attribution_maximum_lies_in_the_planted_object(kit):
    model = load_detector(kit.fused)
    expl = explain_image(model, _planted(), threshold=0.0, max_detections=3)
    x1, y1, x2, y2 = BOX
    for kind in ("gradcam", "pixel", "text_gradcam", "sampling"):
        maps = expl.class_maps[kind]
        assert maps.shape == (6, 96, 96) and torch.isfinite(maps).all() and maps.min() >= 0
    pixel = expl.class_maps["pixel"]
    for label in range(6):
        assert pixel[label].max() > 0, f"pixel[{label}] is empty"
        x, y = _argmax_xy(pixel[label])
        assert x1 <= x < x2 and y1 <= y < y2, f"pixel[{label}] peaks at {(x, y)}, outside {BOX}"
        inside = pixel[label][y1:y2, x1:x2].sum() / pixel[label].sum()
        assert inside > 0.8  # most of the attribution, not only the peak (the blur spreads the rest)
    for d in expl.detections:  # each detection's own map too
        x, y = _argmax_xy(d.maps["pixel"])
        assert x1 <= x < x2 and y1 <= y < y2


def test_a_blank_image_gets_flat_attribution_maps(kit):
    model = load_detector(kit.fused)
    planted = explain_image(model, _planted(), threshold=0.0, max_detections=2)
    blank = explain_image(model, np.full((96, 96, 3), 90, dtype=np.uint8), threshold=0.0, max_detections=2)
    for kind in ("gradcam", "pixel", "text_gradcam"):
        bound = 1e-6 * float(planted.class_maps[kind].abs().max())
        assert float(blank.class_maps[kind].abs().max()) <= bound, kind  # no spurious peak
        for d in blank.detections:
            assert float(d.maps[kind].abs().max()) <= bound


def test_the_logit_splits_into_base_text_and_quality_terms(kit):
    model = load_detector(kit.fused)
    expl = explain_image(
        model, _planted(), threshold=0.0, max_detections=4, pair=("ROTURA_FRACTURA", "RAYONES_ARANAZOS")
    )
    assert expl.detections
    for d in expl.detections:
        p = d.logit_parts
        assert abs(p["base"] + p["text"] + p["quality"] - p["logit"]) < 1e-4
        assert abs(torch.sigmoid(torch.tensor(p["logit"])).item() - d.score) < 1e-5
        assert p["gate"] == 1.0  # the kit's fused model has its gates open
        if d.class_name in ("ROTURA_FRACTURA", "RAYONES_ARANAZOS"):
            m = d.pair_margin
            assert m["against"] == ("RAYONES_ARANAZOS" if d.class_name == "ROTURA_FRACTURA" else "ROTURA_FRACTURA")
            assert abs(m["base"] + m["text"] - m["margin"]) < 1e-4  # the LQE term cancels
            if d.maps:  # the best few detections get their own maps
                assert d.maps["pair"].min() < 0 < d.maps["pair"].max()  # signed
        else:
            assert d.pair_margin is None and "pair" not in d.maps


def test_sampling_maps_put_their_weight_where_the_decoder_attention_sampled(kit):
    """The sampling locations and weights the trace records equal the ones the attention modules compute from
    their own inputs (recomputed here from their linear layers), and a query's sampling map carries its mass at
    those points. It fails if the trace mixes queries or levels up, or if the map blurs its points away."""
    from defectfusion.engine.explain.attribution import evaluation_layer, sampling_map, traced_forward
    from defectfusion.models.inference import InputSpec, prepare_images

    model = load_detector(kit.fused).eval()
    pixels, _ = prepare_images([torch.from_numpy(_planted()).permute(2, 0, 1)], InputSpec.of(model.meta))
    seen = []

    def own(module, args, kwargs, output):
        hidden, reference = kwargs.get("hidden_states", args[0] if args else None), kwargs["reference_points"]
        b, q, _ = hidden.shape
        offsets = module.sampling_offsets(hidden).reshape(b, q, module.n_heads, sum(module.num_points_list), 2)
        scale = module.num_points_scale.to(hidden.dtype).unsqueeze(-1)
        locations = reference[:, :, None, :, :2] + offsets * scale * reference[:, :, None, :, 2:] * module.offset_scale
        seen.append((locations[0].detach(), output[1][0].detach()))

    layer = evaluation_layer(model)
    handles = [
        d.encoder_attn.register_forward_hook(own, with_kwargs=True) for d in model.model.decoder.layers[: layer + 1]
    ]
    try:
        trace = traced_forward(model, pixels)
    finally:
        for handle in handles:
            handle.remove()
    assert len(trace.sampling) == len(seen) == layer + 1
    for (locations, weights), (mine, theirs) in zip(trace.sampling, seen, strict=True):
        torch.testing.assert_close(locations, mine.reshape(locations.shape))
        torch.testing.assert_close(weights, theirs)
    query = int(trace.outputs.logits[0].sigmoid().amax(-1).argmax())
    size = (96, 96)
    grid = (96, 96)
    m = sampling_map(trace, [query], size, grid=grid, sigma=0.5)
    near = torch.zeros(size, dtype=torch.bool)
    for locations, _ in trace.sampling:
        xy = locations[query].reshape(-1, 2)
        for x, y in (xy * torch.tensor([96, 96])).floor().long().tolist():
            if 0 <= x < 96 and 0 <= y < 96:
                near[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = True
    assert m.sum() > 0 and float(m[near].sum() / m.sum()) > 0.9
    assert float(near.float().mean()) < 0.5  # the points do not cover the whole image: the check means something
