"""The optimiser's parameter groups: the fusion heads' scalars train at their own learning rate."""

import pytest
import torch

from defectfusion.config import FusionConfig, ModelConfig, PhaseConfig
from defectfusion.engine.attribution import evaluation_layer
from defectfusion.engine.schedule import FUSION_SCALARS, optimizer_groups
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.groups import set_trainable


@pytest.fixture(scope="module")
def fused(one_thread):
    classes = ["A", "B", "C"]
    torch.manual_seed(0)
    base = build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), classes)
    return add_fusion(base, FusionConfig(), random_text_embeddings(3, 16, seed=1))


def _by_name(groups):
    return {g["name"]: g for g in groups}


def test_the_fusion_scalars_get_their_own_group_at_the_multiplied_lr(fused):
    set_trainable(fused, ["fusion"])
    groups = optimizer_groups(fused, PhaseConfig(trainable=["fusion"], lr=1e-3), 1e-4, scalar_lr_multiplier=30)
    named = _by_name(groups)
    assert list(named) == ["fusion", "fusion/no_decay", FUSION_SCALARS]  # the phase's lr stays param_groups[0]
    heads = list(fused.fusion_heads())
    scalars = {id(p) for h in heads for p in (h.gate, h.logit_scale, h.logit_bias)}
    assert {id(p) for p in named[FUSION_SCALARS]["params"]} == scalars
    assert named[FUSION_SCALARS]["lr"] == pytest.approx(3e-2) and named[FUSION_SCALARS]["weight_decay"] == 0.0
    assert named["fusion"]["lr"] == named["fusion/no_decay"]["lr"] == 1e-3
    assert named["fusion"]["weight_decay"] == 1e-4
    # every trainable parameter sits in exactly one group
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in fused.parameters() if p.requires_grad)


def test_the_multiplier_follows_the_fusion_lr_of_a_phase_with_several_groups(fused):
    set_trainable(fused, ["fusion", "class_head"])
    phase = PhaseConfig(trainable=["fusion", "class_head"], lr={"fusion": 5e-4, "class_head": 1e-3})
    named = _by_name(optimizer_groups(fused, phase, 1e-4, scalar_lr_multiplier=10))
    assert named[FUSION_SCALARS]["lr"] == pytest.approx(5e-3)
    assert named["class_head"]["lr"] == 1e-3
    # a phase that does not train the fusion has no scalar group
    set_trainable(fused, ["class_head"])
    named = _by_name(optimizer_groups(fused, PhaseConfig(trainable=["class_head"], lr=1e-3), 1e-4, 10))
    assert FUSION_SCALARS not in named


def test_the_first_adam_step_moves_the_gate_by_lr_times_the_multiplier(fused):
    set_trainable(fused, ["fusion"])
    for multiplier in (1.0, 30.0):
        model = add_fusion(build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), fused.class_names),
                           FusionConfig(), random_text_embeddings(3, 16, seed=1))  # fmt: skip
        set_trainable(model, ["fusion"])
        groups = optimizer_groups(model, PhaseConfig(trainable=["fusion"], lr=1e-3), 1e-4, multiplier)
        optimizer = torch.optim.AdamW(groups)
        model.eval()
        out = model(pixel_values=torch.rand(1, 3, 96, 96))
        (out.logits.sigmoid() * torch.linspace(-1, 1, 3)).sum().backward()
        optimizer.step()
        # in eval mode only the evaluation layer's head ran; Adam's first step is lr * sign(gradient):
        # its gate leaves 0 by exactly the group's lr
        head = model.model.decoder.class_embed[evaluation_layer(model)].fusion
        assert head.gate.abs().item() == pytest.approx(1e-3 * multiplier, rel=1e-3)
