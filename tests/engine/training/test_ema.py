import math

import torch

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.engine.training.ema import ModelEMA
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.groups import set_trainable


def _fused():
    torch.manual_seed(0)
    base = build_detector(ModelConfig(preset="hgnetv2_micro"), list("ABCDEF"))
    return add_fusion(base, FusionConfig(), random_text_embeddings(6, 16, seed=1))


def test_tied_tensors_are_averaged_once_and_text_stays_constant():
    model = _fused()
    set_trainable(model, ["fusion", "class_head"])
    ema = ModelEMA(model, decay=0.9, warmups=1.0)
    # the class heads are tied under two names: each may appear once only
    ids = [id(model.state_dict(keep_vars=True)[n]) for n in ema.names]
    assert len(ids) == len(set(ids))
    assert not any(n.endswith("text_embeddings") for n in ema.names)
    text = model.text_embeddings.clone()
    weight = model.model.decoder.class_embed[0].weight
    with torch.no_grad():
        weight.add_(1.0)  # the live model moves by 1
    ema.update()
    d = ema.current_decay()
    ema_weight = ema.module.model.decoder.class_embed[0].weight
    expected = d * (weight - 1.0) + (1 - d) * weight
    assert torch.allclose(ema_weight, expected, atol=1e-6)
    assert torch.equal(ema.module.text_embeddings, text)
    assert torch.allclose(ema.module.text_embeddings.norm(dim=-1), torch.ones(6))


def test_decay_ramps_up_as_in_the_original():
    ema = ModelEMA(_fused(), decay=0.9999, warmups=1000)
    ema.updates = 1000
    assert math.isclose(ema.current_decay(), 0.9999 * (1 - math.exp(-1)))


def test_frozen_groups_are_not_averaged():
    model = _fused()
    set_trainable(model, ["fusion"])
    ema = ModelEMA(model)
    assert ema.names and all(".fusion." in n for n in ema.names)
