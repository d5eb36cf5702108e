"""Every tensor the model makes at run time follows its dtype and device: a model moved to float64
runs a forward pass and a training step with no mismatch (a float32 tensor created on the fly would
make an op fail or come out float32)."""

from __future__ import annotations

import pytest
import torch

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.engine.training.loss import install_deim_loss
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings


@pytest.mark.parametrize("preset", ["hgnetv2_micro", "dinov3_demo"])
def test_a_float64_model_runs_inference_and_a_training_step(preset):
    torch.manual_seed(0)
    base = build_detector(ModelConfig(preset=preset), ["a", "b", "c"])
    fusion = FusionConfig(query_selection=True, text="random", gate_init=0.5)
    model = add_fusion(base, fusion, random_text_embeddings(3, 16, seed=1)).to(torch.float64)
    size = model.meta.image_size
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.float64}  # text embeddings too

    model.eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, *size, dtype=torch.float64))
    assert out.logits.dtype == out.pred_boxes.dtype == torch.float64

    install_deim_loss(model)
    model.train()
    labels = [
        {
            "class_labels": torch.tensor([0, 2]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]], dtype=torch.float64),
        }
    ]
    out = model(pixel_values=torch.randn(1, 3, *size, dtype=torch.float64), labels=labels)  # + denoising queries
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    assert any(".fusion." in n for n in grads) and {g.dtype for g in grads.values()} == {torch.float64}
