import pytest
import torch

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.errors import ConfigError
from defectfusion.models.checkpoint import load_detector, save_detector
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import FusedClassifier, derangement, random_text_embeddings
from defectfusion.models.groups import GROUPS, parameter_group, parameter_groups, set_trainable
from defectfusion.models.presets import PRESETS

TINY = ["dinov3_micro", "hgnetv2_micro"]


def _labels():
    return [
        {"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]])},
        {"class_labels": torch.tensor([3]), "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.3]])},
    ]


def _pair(preset, classes, query_selection=False, text_kind="descriptions"):
    torch.manual_seed(0)
    base = build_detector(ModelConfig(preset=preset), classes)
    text = random_text_embeddings(len(classes), 24, seed=1)
    fused = add_fusion(base, FusionConfig(query_selection=query_selection, text=text_kind), text)
    return base, fused


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize(
    "query_selection, text_kind", [(False, "descriptions"), (True, "descriptions"), (False, "shuffled")]
)
def test_fused_model_equals_base_model_exactly_at_init(preset, query_selection, text_kind, six_classes):
    base, fused = _pair(preset, six_classes, query_selection, text_kind)
    size = base.meta.image_size
    x = torch.randn(2, 3, *size)
    base.eval(), fused.eval()
    with torch.no_grad():
        a, b = base(pixel_values=x), fused(pixel_values=x)
    assert a.logits.shape == (2, base.config.num_queries, 6) and a.pred_boxes.shape == (2, base.config.num_queries, 4)
    assert (a.logits - b.logits).abs().max().item() == 0.0
    assert (a.pred_boxes - b.pred_boxes).abs().max().item() == 0.0

    base.train(), fused.train()
    torch.manual_seed(7)  # the same denoising queries for both
    a = base(pixel_values=x, labels=_labels())
    torch.manual_seed(7)
    b = fused(pixel_values=x, labels=_labels())
    assert (a.logits - b.logits).abs().max().item() == 0.0
    assert (a.pred_boxes - b.pred_boxes).abs().max().item() == 0.0
    assert a.loss.item() == b.loss.item()

    with torch.no_grad():
        for head in fused.fusion_heads():
            head.gate.fill_(0.3)
    base.eval(), fused.eval()
    with torch.no_grad():
        a, b = base(pixel_values=x), fused(pixel_values=x)
    assert (a.logits - b.logits).abs().max().item() > 1e-3


def test_fusion_sits_in_every_decoder_layer_and_the_tied_top_level_copy(six_classes):
    _, fused = _pair("dinov3_micro", six_classes, query_selection=True)
    layers = fused.model.decoder.class_embed
    assert len(layers) == fused.config.decoder_layers
    assert all(isinstance(m, FusedClassifier) for m in layers)
    assert all(fused.class_embed[i] is layers[i] for i in range(len(layers)))
    assert isinstance(fused.model.enc_score_head, FusedClassifier)
    assert len(list(fused.fusion_heads())) == len(layers) + 1


def test_every_parameter_belongs_to_exactly_one_group(six_classes):
    _, fused = _pair("dinov3_micro", six_classes, query_selection=True)
    seen: dict[int, str] = {}
    for name, param in fused.named_parameters(remove_duplicate=False):
        group = parameter_group(name)
        assert group in GROUPS, name
        # a tied tensor listed under two names must land in the same group both times
        assert seen.setdefault(id(param), group) == group, name
    groups = parameter_groups(fused)
    assert sum(len(v) for v in groups.values()) == len(list(fused.parameters()))
    assert all(groups[g] for g in GROUPS)
    names = {g: [n for n, _ in v] for g, v in groups.items()}
    assert all(n.startswith("model.conv_encoder.backbone.") for n in names["backbone"])
    assert any("spatial_tuning_adapter" in n for n in names["encoder"])
    assert any("lqe_layers" in n for n in names["class_head"])
    assert any(".fusion.gate" in n for n in names["fusion"])
    assert any("enc_score_head.weight" in n for n in names["decoder"])


@pytest.mark.parametrize("preset", TINY)
def test_a_fusion_only_step_leaves_everything_else_bit_identical(preset, six_classes):
    _, fused = _pair(preset, six_classes)
    counts = set_trainable(fused, ["fusion"])
    assert counts["fusion"] > 0 and sum(counts.values()) == counts["fusion"]
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    fused.train()
    optimizer = torch.optim.AdamW([p for p in fused.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(2, 3, *fused.meta.image_size)
    for _ in range(2):  # the second step moves the projection too (the gate is non-zero then)
        loss = fused(pixel_values=x, labels=_labels()).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = fused.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(".fusion." in k for k in changed), changed
    assert any(k.endswith("fusion.proj.weight") for k in changed)
    # batch-norm statistics included: the frozen parts ran in eval mode
    assert any("running_mean" in k for k in before)


def test_loss_reaches_the_fusion_of_every_decoder_layer(six_classes):
    _, fused = _pair("dinov3_micro", six_classes)
    fused.train()
    x = torch.randn(2, 3, *fused.meta.image_size)
    fused(pixel_values=x, labels=_labels()).loss.backward()
    heads = [m.fusion for m in fused.model.decoder.class_embed]
    # at gate 0 only the gate has a gradient ...
    assert all(h.gate.grad is not None and h.gate.grad.abs() > 0 for h in heads)
    assert all(h.proj.weight.grad is None or h.proj.weight.grad.abs().max() == 0 for h in heads)
    fused.zero_grad()
    with torch.no_grad():
        for h in heads:
            h.gate.fill_(0.1)
    fused(pixel_values=x, labels=_labels()).loss.backward()
    # ... and once it is open, every fusion parameter of every layer gets one
    for h in heads:
        for name, p in h.named_parameters():
            assert p.grad is not None and p.grad.abs().max() > 0, name


def test_frozen_trunk_builds_no_graph(six_classes):
    _, fused = _pair("dinov3_micro", six_classes)
    set_trainable(fused, ["fusion", "class_head"])
    fused.train()
    out = fused(pixel_values=torch.randn(1, 3, *fused.meta.image_size), labels=_labels()[:1])
    assert out.loss.requires_grad
    assert not out.encoder_last_hidden_state[0].requires_grad
    assert all(
        not p.requires_grad for n, p in fused.named_parameters() if parameter_group(n) in {"backbone", "encoder"}
    )


def test_unknown_group_and_bad_size_give_clear_errors(six_classes):
    _, fused = _pair("hgnetv2_micro", six_classes)
    with pytest.raises(ConfigError, match="unknown parameter group"):
        set_trainable(fused, ["fusion", "heads"])
    with pytest.raises(ConfigError, match="multiples of the model.s largest stride"):
        build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(100, 128)), six_classes)
    with pytest.raises(ConfigError, match="Did you mean"):
        build_detector(ModelConfig(preset="dinov3_mm"), six_classes)


def test_random_text_mode_replaces_the_embeddings(six_classes):
    text = torch.nn.functional.normalize(torch.randn(6, 24), dim=-1)
    model = build_detector(ModelConfig(preset="hgnetv2_micro"), six_classes, FusionConfig(text="random"), text)
    assert model.text_embeddings.shape == (6, 24)
    assert not torch.allclose(model.text_embeddings, text)
    assert model.meta.fusion.text == "random"


@pytest.mark.parametrize("seed", [0, 3])
def test_shuffled_text_mode_gives_each_class_another_class_text(seed, six_classes, tmp_path):
    text = torch.nn.functional.normalize(torch.randn(6, 24), dim=-1)
    fusion = FusionConfig(text="shuffled", random_seed=seed)
    base = build_detector(ModelConfig(preset="hgnetv2_micro"), six_classes)
    for model in (build_detector(ModelConfig(preset="hgnetv2_micro"), six_classes, fusion, text),
                  add_fusion(base, fusion, text)):  # fmt: skip
        rows = model.text_embeddings
        # every row is a real class embedding, each used once, none at its own class
        match = (rows @ text.t()).argmax(-1)
        assert torch.allclose(rows, text[match], atol=1e-6)
        assert sorted(match.tolist()) == list(range(6))
        assert (match != torch.arange(6)).all()
        assert torch.equal(match, derangement(6, seed))
        for head in model.fusion_heads():
            assert torch.equal(head.text_embeddings, rows)
        assert model.meta.fusion.text == "shuffled" and model.meta.fusion.text_seed == seed
    save_detector(model, tmp_path / "m")
    loaded = load_detector(tmp_path / "m")
    assert loaded.meta.fusion.text == "shuffled" and loaded.meta.fusion.text_seed == seed
    assert torch.equal(loaded.text_embeddings, model.text_embeddings)


def test_shuffled_text_needs_two_classes():
    text = torch.nn.functional.normalize(torch.randn(1, 24), dim=-1)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_detector(ModelConfig(preset="hgnetv2_micro"), ["ONLY"], FusionConfig(text="shuffled"), text)


@pytest.mark.parametrize(
    "preset, millions",
    [
        ("dinov3_s", 9.7),
        ("dinov3_m", 18.1),
        ("dinov3_l", 32.2),
        ("dinov3_x", 50.3),
        ("hgnetv2_n", 3.6),
        ("hgnetv2_pico", 1.5),
        ("hgnetv2_femto", 1.0),
        ("hgnetv2_atto", 0.5),
    ],
)
def test_released_presets_have_the_published_sizes(preset, millions):
    # built on the meta device: shapes only, no memory, no time
    with torch.device("meta"):
        model = build_detector(ModelConfig(preset=preset), [f"c{i}" for i in range(80)])
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(millions, rel=0.04)


def test_every_preset_has_a_valid_input_size():
    for preset in PRESETS.values():
        assert all(s % 32 == 0 for s in preset.image_size), preset.name
