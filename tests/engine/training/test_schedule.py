"""The optimiser's parameter groups (the fusion heads' scalars train at their own learning rate) and the lr schedule."""

import pytest
import torch

from defectfusion.config import FusionConfig, ModelConfig, PhaseConfig
from defectfusion.engine.explain.attribution import evaluation_layer
from defectfusion.engine.training.schedule import FUSION_SCALARS, build_scheduler, flat_cosine_factor, optimizer_groups
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


# ----------------------------------------------------------------------------- the lr schedule
# 61 steps, 4 of warm-up, flat to step int(61 * 0.5) = 30, then a half cosine over steps 30..60:
# at step 30 + 30p the factor is 0.05 + 0.95 * (1 + cos(pi p)) / 2.
TOTAL, WARMUP, FLAT, MIN = 61, 4, 0.5, 0.05


@pytest.mark.parametrize(
    ("step", "factor"),
    [
        (0, 1 / 4),  # warm-up: (step + 1) / warmup
        (1, 2 / 4),
        (3, 1.0),  # the last warm-up step reaches the base lr
        (4, 1.0),  # flat ...
        (29, 1.0),
        (30, 1.0),  # ... to where the cosine starts (p = 0)
        (40, 0.05 + 0.95 * (1 + 0.5) / 2),  # p = 1/3, cos = 1/2: 0.7625
        (45, 0.05 + 0.95 * (1 + 0.0) / 2),  # p = 1/2: 0.525
        (50, 0.05 + 0.95 * (1 - 0.5) / 2),  # p = 2/3: 0.2875
        (60, 0.05),  # the last step: min_factor
        (61, 0.05),  # what the scheduler holds after the last step
    ],
)
def test_warm_up_flat_then_cosine_to_min_factor_at_the_last_step(step, factor):
    assert flat_cosine_factor(step, TOTAL, WARMUP, FLAT, MIN) == pytest.approx(factor, abs=1e-12)


def test_the_last_step_is_exactly_min_factor():
    for total, warmup, flat in [(61, 4, 0.5), (100, 10, 0.5), (7, 0, 0.0), (1000, 500, 0.9)]:
        assert flat_cosine_factor(total - 1, total, warmup, flat, MIN) == MIN, (total, warmup, flat)
        assert flat_cosine_factor(total - 2, total, warmup, flat, MIN) > MIN


def test_edge_cases_of_the_schedule():
    factors = lambda total, warmup, flat: [flat_cosine_factor(s, total, warmup, flat, MIN) for s in range(total)]  # noqa: E731
    # no warm-up: step 0 is already at the base lr; with no flat part the cosine starts there
    assert factors(10, 0, 0.5)[:6] == [1.0] * 6
    assert factors(5, 0, 0.0) == pytest.approx(
        [1.0, 0.05 + 0.95 * (1 + 2**-0.5) / 2, 0.525, 0.05 + 0.95 * (1 - 2**-0.5) / 2, 0.05]
    )
    # the flat part covers the phase (total <= flat end): no decay at all
    assert factors(10, 2, 1.0) == [0.5] + [1.0] * 9
    assert factors(8, 10, 0.5) == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    )  # warm-up longer than the phase
    # one step after the flat part: it is the last one, at min_factor
    assert factors(5, 4, 0.0) == [0.25, 0.5, 0.75, 1.0, 0.05]
    assert factors(1, 0, 0.5) == [0.05]  # a one-step phase: its only step is the last


def test_the_scheduler_applies_the_factors_to_every_group_and_resumes_where_it_stopped():
    def make():
        weights = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
        optimizer = torch.optim.SGD([{"params": weights[:1], "lr": 0.2}, {"params": weights[1:], "lr": 0.02}])
        return optimizer, build_scheduler(optimizer, TOTAL, WARMUP, FLAT, MIN)

    def run(optimizer, scheduler, steps):
        used = []
        for _ in range(steps):  # the trainer's order: the step, then the scheduler
            used.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()
            scheduler.step()
        return used

    optimizer, scheduler = make()
    used = run(optimizer, scheduler, 45)
    saved = optimizer.state_dict(), scheduler.state_dict()
    used += run(optimizer, scheduler, TOTAL - 45)
    assert used[0] == pytest.approx([0.2 / 4, 0.02 / 4]) and used[3] == pytest.approx([0.2, 0.02])
    assert used[30] == pytest.approx([0.2, 0.02]) and used[45] == pytest.approx([0.2 * 0.525, 0.02 * 0.525])
    assert used[60] == pytest.approx([0.2 * 0.05, 0.02 * 0.05])  # the last step's lr: min_factor of each
    decay = [lr for lr, _ in used[30:]]
    assert all(
        a > b for a, b in zip(decay[:-1], decay[1:], strict=True)
    )  # strictly down from the flat end to the last step
    # a resumed phase (optimizer, then scheduler state, as the trainer loads `last`) goes on with the same lrs
    optimizer, scheduler = make()
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    assert run(optimizer, scheduler, TOTAL - 45) == used[45:]
