"""The manipulation check: how much of the detections' class logits the text term carried."""

import pytest
import torch
import torch.nn.functional as F

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.engine.explain.attribution import evaluation_layer
from defectfusion.engine.explain.text_usage import TextUsageProbe, UsageSums, measure_text_usage, select_queries
from defectfusion.models.detector import build_detector
from defectfusion.models.fusion import MAX_LOGIT_SCALE, random_text_embeddings
from tests.helpers import SIZE, calibrate

CLASSES = ["A", "B", "C", "D"]


def test_sums_match_a_hand_computation_on_three_queries():
    base = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, -3.0], [-5.0, -6.0, -7.0]]])
    text = torch.tensor([[[0.0, 3.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    sums = UsageSums(score_threshold=0.25)
    sums.add(base, text, base + text)
    usage = sums.result([0.1, 0.2], layer=1, layer_gate=0.2)
    # query 0: fused [2, 3, -1] -> class 1 (base says 0: flipped), base 0, text 3
    # query 1: fused [0.5, 1, -3] -> class 1 (base says 1 too), base 1, text 0
    # query 2: top score sigmoid(-5) < 0.25: not measured
    assert (usage.num_images, usage.num_queries, usage.num_confident, usage.num_selected) == (1, 3, 2, 2)
    assert usage.fallback_images == 0 and usage.num_flipped == 1 and usage.flip_share == 0.5
    assert usage.mean_abs_base == pytest.approx(0.5) and usage.mean_abs_text == pytest.approx(1.5)
    assert usage.text_share == pytest.approx(3.0)
    # centred on each query's class mean: base |0 - 1/3|, |1 + 2/3|; text |3 - 1|, |0 - 1/6|
    assert usage.mean_abs_base_centered == pytest.approx((1 / 3 + 5 / 3) / 2)
    assert usage.mean_abs_text_centered == pytest.approx((2 + 1 / 6) / 2)
    assert usage.text_share_centered == pytest.approx((13 / 12) / 1.0)
    assert usage.gates == [0.1, 0.2] and usage.layer_gate == 0.2
    assert set(usage.to_dict()) >= {"gates", "text_share", "flip_share", "num_selected", "mean_abs_text"}


def test_an_image_without_confident_queries_contributes_its_best_ones():
    index, fallback = select_queries(torch.tensor([0.1, 0.3, 0.2, 0.05]), 0.25, 2)
    assert index.tolist() == [1] and not fallback
    index, fallback = select_queries(torch.tensor([0.1, 0.2, 0.15, 0.05]), 0.25, 2)
    assert index.tolist() == [1, 2] and fallback
    sums = UsageSums(score_threshold=0.9, fallback_k=2)
    sums.add(torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), torch.full((2, 5, 3), -1.0))
    usage = sums.result([0.0], 0, 0.0)
    assert usage.fallback_images == 2 and usage.num_confident == 0 and usage.num_selected == 4
    assert usage.text_share is None  # base 0 too: no share to speak of


@pytest.fixture(scope="module")
def fused(one_thread):
    torch.manual_seed(0)
    fusion = FusionConfig(text="descriptions")
    model = build_detector(
        ModelConfig(preset="hgnetv2_micro", image_size=(SIZE, SIZE)), CLASSES, fusion, random_text_embeddings(4, 8, 1)
    )
    return calibrate(model)


def _images(n=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, SIZE, SIZE, generator=generator) for _ in range(n)]


def test_a_plain_model_has_no_text_usage(one_thread):
    torch.manual_seed(0)
    plain = calibrate(build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(SIZE, SIZE)), CLASSES))
    assert measure_text_usage(plain, _images(1)) is None
    with TextUsageProbe(plain) as probe:
        plain(pixel_values=_images(1)[0])
    assert probe.result() is None


def test_gate_zero_means_no_share_and_no_flip(fused):
    with torch.no_grad():
        for head in fused.fusion_heads():
            head.gate.zero_()
    usage = measure_text_usage(fused, _images(), score_threshold=0.0)  # every query measured
    assert usage.gates == [0.0] * len(list(fused.fusion_heads())) and usage.layer_gate == 0.0
    assert usage.layer == evaluation_layer(fused)
    assert usage.num_images == 3 and usage.num_selected == usage.num_queries == 3 * fused.config.num_queries
    assert usage.text_share == 0.0 and usage.mean_abs_text == 0.0 and usage.mean_abs_base > 0
    assert usage.flip_share == 0.0 and usage.num_flipped == 0


def test_a_large_gate_favouring_another_class_flips_predictions_as_computed_by_hand(fused):
    images = _images()
    layer = evaluation_layer(fused)
    head = fused.model.decoder.class_embed[layer]
    # what the base head alone predicts; the text will favour the class it predicts least
    features: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0]))
    with torch.no_grad():
        for head_ in fused.fusion_heads():
            head_.gate.zero_()
        plain_logits = [fused(pixel_values=x).logits for x in images]
    hook.remove()
    with torch.no_grad():
        base_top = torch.cat([F.linear(h, head.weight, head.bias).argmax(-1).flatten() for h in features])
    favoured = int(torch.bincount(base_top, minlength=4).argmin())
    # text = 100 * cos + beta, with the projection pointing every query at the favoured class's text
    with torch.no_grad():
        for h in fused.fusion_heads():
            h.set_text_embeddings(torch.eye(4, 8))
            h.proj.weight.zero_()
            h.proj.bias.copy_(torch.eye(4, 8)[favoured])
            h.logit_scale.fill_(MAX_LOGIT_SCALE)
            h.gate.fill_(0.05)  # +5 on the favoured class's logit
    with TextUsageProbe(fused) as probe, torch.no_grad():
        logits = [fused(pixel_values=x).logits for x in images]
    usage = probe.result()
    # by hand: the same selection, terms and flips from the recorded features
    flipped = selected = 0
    abs_base = abs_text = 0.0
    for h, out in zip(features, logits, strict=True):
        base = F.linear(h[0], head.weight, head.bias).detach()
        text = 0.05 * (100.0 * torch.eye(4)[favoured] + head.fusion.logit_bias.detach())
        fused_ = base + text
        scores = out[0].sigmoid().amax(-1)
        keep = scores >= 0.25 if (scores >= 0.25).any() else torch.zeros_like(scores, dtype=torch.bool).index_fill(
            0, scores.topk(10).indices, True)  # fmt: skip
        predicted = fused_[keep].argmax(-1)
        flipped += int((base[keep].argmax(-1) != predicted).sum())
        selected += int(keep.sum())
        abs_base += float(base[keep].gather(-1, predicted[:, None]).abs().sum())
        abs_text += float(text.expand_as(base)[keep].gather(-1, predicted[:, None]).abs().sum())
    assert usage.num_selected == selected and usage.num_flipped == flipped
    assert usage.flip_share == pytest.approx(flipped / selected) and usage.flip_share > 0
    assert usage.text_share == pytest.approx(abs_text / abs_base, rel=1e-4)
    assert usage.layer_gate == pytest.approx(0.05)
    # the probe changes nothing the model outputs
    with torch.no_grad():
        again = [fused(pixel_values=x).logits for x in images]
    assert all(torch.equal(a, b) for a, b in zip(logits, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(logits, plain_logits, strict=True))
