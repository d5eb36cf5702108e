import torch
from transformers.loss.loss_deimv2 import Deimv2ForObjectDetectionLoss

from defectfusion.config import ModelConfig
from defectfusion.engine.training.loss import _layered, deim_loss, install_deim_loss
from defectfusion.models.detector import build_detector


def _labels():
    return [
        {"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]])},
        {"class_labels": torch.tensor([3]), "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.3]])},
    ]


def _losses(loss_fn):
    torch.manual_seed(0)
    model = build_detector(ModelConfig(preset="dinov3_micro"), list("ABCDEF")).train()
    model.loss_function = loss_fn
    torch.manual_seed(1)
    return model(pixel_values=torch.randn(2, 3, 64, 64), labels=_labels()).loss_dict


def test_the_last_layer_gets_its_fine_grained_localisation_loss():
    ours, theirs = _losses(deim_loss), _losses(Deimv2ForObjectDetectionLoss)
    # transformers gives the last decoder layer no pred_corners: no FGL term for it
    assert "loss_fgl" not in theirs
    assert "loss_fgl" in ours and ours["loss_fgl"].item() > 0
    # the last layer is the distillation teacher: no DDF for itself
    assert ours["loss_ddf"].item() == 0.0
    # the pre head, the encoder's query selection and the denoising pre head are their own terms
    assert {"loss_mal_pre", "loss_mal_enc_0", "loss_mal_dn_pre"} <= set(ours)
    assert not any(k.startswith("loss_fgl_pre") or k.startswith("loss_fgl_enc") for k in ours)


def test_each_auxiliary_layer_is_paired_with_its_own_corners():
    layers, queries = 3, 5
    # tag every tensor with the layer it comes from: the pre head is -1
    logits = torch.stack([torch.full((2, queries, 6), float(i)) for i in [-1, *range(layers)]], dim=1)
    boxes = torch.stack([torch.full((2, queries, 4), float(i)) for i in [-1, *range(layers)]], dim=1)
    corners = torch.stack([torch.full((2, queries, 132), float(i)) for i in range(layers)], dim=1)
    refs = torch.stack([torch.full((2, queries, 4), float(i)) for i in range(layers)], dim=1)
    pre, per_layer = _layered(logits, boxes, corners, refs)
    assert pre["logits"].unique().item() == -1 and "pred_corners" not in pre
    for i, layer in enumerate(per_layer):
        for key in ("logits", "pred_boxes", "pred_corners", "ref_points"):
            assert layer[key].unique().item() == i, (i, key)
        assert layer["teacher_corners"].unique().item() == layers - 1


def test_install_replaces_the_loss_of_a_model():
    model = build_detector(ModelConfig(preset="hgnetv2_micro"), list("AB"))
    install_deim_loss(model)
    assert model.loss_function is deim_loss
