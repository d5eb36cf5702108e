import math

import pytest
import torch
from torch import nn

from defectfusion.models.fusion import (
    FusedClassifier,
    TextFusionHead,
    class_text_embeddings,
    derangement,
    prior_logit,
    random_text_embeddings,
    shuffled_text_embeddings,
)


def test_prompt_ensemble_is_the_renormalised_mean_of_normalised_prompts():
    a = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # two prompts of one class, different norms
    b = torch.tensor([[0.0, -2.0]])
    out = class_text_embeddings([a, b])
    expected_a = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    assert torch.allclose(out[0], expected_a)
    assert torch.allclose(out[1], torch.tensor([0.0, -1.0]))
    assert torch.allclose(out.norm(dim=-1), torch.ones(2))


def test_random_control_is_fixed_unit_vectors_of_the_same_shape():
    x, y = random_text_embeddings(6, 384, seed=3), random_text_embeddings(6, 384, seed=3)
    assert x.shape == (6, 384) and torch.equal(x, y)
    assert torch.allclose(x.norm(dim=-1), torch.ones(6))
    assert not torch.equal(x, random_text_embeddings(6, 384, seed=4))


@pytest.mark.parametrize("n", [2, 3, 6, 10])
def test_derangement_moves_every_class_for_every_seed(n):
    for seed in range(20):
        order = derangement(n, seed)
        assert sorted(order.tolist()) == list(range(n))
        assert (order != torch.arange(n)).all()
        assert torch.equal(order, derangement(n, seed))  # fixed by the seed


def test_derangements_differ_between_seeds_and_need_two_elements():
    assert len({tuple(derangement(6, seed).tolist()) for seed in range(10)}) > 5
    assert not torch.equal(derangement(6, 0), derangement(6, 1))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1)


def test_shuffled_control_assigns_each_class_another_class_text():
    text = torch.randn(6, 8)
    shuffled = shuffled_text_embeddings(text, seed=4)
    order = derangement(6, 4)
    assert torch.equal(shuffled, text[order])
    for i in range(6):
        assert not torch.equal(shuffled[i], text[i])


def test_zero_gate_returns_the_base_logits_bit_for_bit():
    torch.manual_seed(0)
    linear = nn.Linear(16, 6)
    head = FusedClassifier(linear, TextFusionHead(16, torch.randn(6, 8)))
    h = torch.randn(2, 5, 16) * 100  # large features: the text logits are far from zero
    assert torch.equal(head(h), linear(h))
    with torch.no_grad():
        head.fusion.gate.fill_(0.5)
    assert not torch.allclose(head(h), linear(h))


def test_the_two_terms_add_up_to_the_fused_logits():
    torch.manual_seed(0)
    linear = nn.Linear(16, 6)
    fusion = TextFusionHead(16, torch.randn(6, 8))
    assert fusion.gate.item() == 0.0  # a new head keeps the detector's logits
    with torch.no_grad():
        fusion.gate.fill_(0.4)
    head = FusedClassifier(linear, fusion)
    h = torch.randn(3, 16)
    base, text = head.terms(h)
    assert torch.equal(base, linear(h))
    assert torch.allclose(text, 0.4 * head.fusion.text_logits(h))
    assert torch.allclose(base + text, head(h))


def test_fused_classifier_keeps_the_linear_parameter_names_and_tensors():
    linear = nn.Linear(16, 6)
    head = FusedClassifier(linear, TextFusionHead(16, torch.randn(6, 8)))
    assert head.weight is linear.weight and head.bias is linear.bias
    names = set(head.state_dict())
    assert {"weight", "bias"} <= names
    assert {n for n in names if n not in {"weight", "bias"}} == {
        "fusion.proj.weight",
        "fusion.proj.bias",
        "fusion.logit_scale",
        "fusion.logit_bias",
        "fusion.gate",
        "fusion.text_embeddings",
    }


def test_initial_values_follow_clip_and_the_detector_prior():
    head = TextFusionHead(16, torch.randn(3, 8))
    assert head.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert head.logit_bias.item() == pytest.approx(prior_logit(0.01)) == pytest.approx(-4.595, abs=1e-3)
    assert head.gate.item() == 0.0
    assert "text_embeddings" in dict(head.named_buffers())
    assert "text_embeddings" not in dict(head.named_parameters())


def test_similarity_is_a_cosine_and_text_swap_checks_shape():
    head = TextFusionHead(4, torch.eye(3, 5))
    sim = head.similarity(torch.randn(7, 4))
    assert sim.shape == (7, 3) and sim.abs().max() <= 1 + 1e-6
    head.set_text_embeddings(torch.randn(3, 5))
    assert torch.allclose(head.text_embeddings.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="same classes"):
        head.set_text_embeddings(torch.randn(3, 6))


def test_mismatched_class_count_is_refused():
    with pytest.raises(ValueError, match="4 classes but the detector has 6"):
        FusedClassifier(nn.Linear(8, 6), TextFusionHead(8, torch.randn(4, 5)))
