"""The DEIM criterion, built from transformers' ``Deimv2Loss`` pieces, assembled as the original.

transformers 5.23's ``Deimv2ForObjectDetectionLoss`` departs from the original DEIM criterion
(Intellindust-AI-Lab/DEIMv2, ``engine/deim/deim_criterion.py``) in how it lays out the
decoder's outputs:

1. The last decoder layer gets no ``pred_corners``/``ref_points``, so its fine-grained
   localisation (FGL) term is skipped; the original computes it (and no DDF for that layer:
   it is the teacher).
2. In training, the decoder returns ``L + 1`` class/box predictions (the layer-0 "pre" head
   first, then the ``L`` layers) but only ``L`` corner predictions. transformers zips them as
   they come, so auxiliary layer ``i`` gets the logits of layer ``i - 1`` with the corners of
   layer ``i`` (and the same for the denoising queries). The original keeps the pre head apart
   (``pre_outputs``: matched, classification and boxes, no FGL) and pairs every layer with its
   own corners.
3. The encoder's query-selection output is matched on its own and supervised with MAL and, on
   the union of matches, boxes; it never takes part in FGL.
4. Under data parallelism the number of boxes is averaged over processes.

Everything else (matcher, MAL, box, FGL/DDF formulas, dense one-to-one union) is transformers'
own code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from transformers.loss.loss_deimv2 import Deimv2Loss


def _num_boxes(count: int, device: torch.device) -> float:
    total = torch.as_tensor([float(count)], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        total = total / dist.get_world_size()
    return torch.clamp(total, min=1).item()


class DeimCriterion(Deimv2Loss):
    """``Deimv2Loss`` with the original DEIM ``forward``.

    ``outputs`` holds the last layer (``logits``, ``pred_boxes``, ``pred_corners``,
    ``ref_points``, ``teacher_corners``, ``teacher_logits``) and optionally ``aux_outputs``
    (layers ``0 .. L-2``), ``pre_outputs``, ``enc_aux_outputs``, ``dn_outputs``,
    ``dn_pre_outputs`` and ``denoising_meta_values``.
    """

    def _losses(self, outputs, targets, indices, num_boxes, indices_union, num_union, union_for, suffix=""):
        result = {}
        for loss in self.losses:
            use_union = indices_union is not None and loss in union_for
            l_dict = self.get_loss(
                loss, outputs, targets, indices_union if use_union else indices, num_union if use_union else num_boxes
            )
            result.update({k + suffix: v * self.weight_dict[k] for k, v in l_dict.items() if k in self.weight_dict})
        return result

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        device = outputs["logits"].device
        indices = self.matcher({"logits": outputs["logits"], "pred_boxes": outputs["pred_boxes"]}, targets)
        num_boxes = _num_boxes(sum(len(t["class_labels"]) for t in targets), device)

        aux = outputs.get("aux_outputs", [])
        pre = outputs.get("pre_outputs")
        enc = outputs.get("enc_aux_outputs", [])
        aux_indices = [self.matcher(o, targets) for o in aux + ([pre] if pre is not None else [])]
        enc_indices = [self.matcher(o, targets) for o in enc]

        indices_union, num_union = None, num_boxes
        if self.use_dense_one_to_one and (aux_indices or enc_indices):
            indices_union = self._get_dense_o2o_indices(indices, aux_indices + enc_indices)
            num_union = _num_boxes(sum(len(rows) for rows, _ in indices_union), device)

        both = ("boxes", "local")
        losses = self._losses(outputs, targets, indices, num_boxes, indices_union, num_union, both)
        for i, layer in enumerate(aux):
            losses.update(
                self._losses(layer, targets, aux_indices[i], num_boxes, indices_union, num_union, both, f"_aux_{i}")
            )
        if pre is not None:
            losses.update(
                self._losses(pre, targets, aux_indices[-1], num_boxes, indices_union, num_union, both, "_pre")
            )
        for i, layer in enumerate(enc):
            losses.update(
                self._losses(
                    layer, targets, enc_indices[i], num_boxes, indices_union, num_union, ("boxes",), f"_enc_{i}"
                )
            )

        if "dn_outputs" in outputs:
            meta = outputs["denoising_meta_values"]
            dn_indices = self.get_cdn_matched_indices(meta, targets)
            dn_num_boxes = num_boxes * meta["dn_num_group"]
            for i, layer in enumerate(outputs["dn_outputs"]):
                losses.update(self._losses(layer, targets, dn_indices, dn_num_boxes, None, 0, (), f"_dn_{i}"))
            if "dn_pre_outputs" in outputs:
                losses.update(
                    self._losses(outputs["dn_pre_outputs"], targets, dn_indices, dn_num_boxes, None, 0, (), "_dn_pre")
                )
        return losses


def _layered(class_logits, boxes, corners, refs):
    """Split the decoder's stacked outputs into the pre head and per-layer dicts.

    Shapes: ``class_logits``/``boxes`` ``[B, L+1, Q, .]`` (pre head first), ``corners``/``refs``
    ``[B, L, Q, .]``. Returns ``(pre, layers)`` with the last layer as the teacher of all.
    """
    teacher_corners, teacher_logits = corners[:, -1], class_logits[:, -1]
    layers = [
        {
            "logits": class_logits[:, i + 1],
            "pred_boxes": boxes[:, i + 1],
            "pred_corners": corners[:, i],
            "ref_points": refs[:, i],
            "teacher_corners": teacher_corners,
            "teacher_logits": teacher_logits,
        }
        for i in range(corners.shape[1])
    ]
    pre = {"logits": class_logits[:, 0], "pred_boxes": boxes[:, 0]}
    return pre, layers


def deim_loss(
    logits,
    labels,
    device,
    pred_boxes,
    config,
    outputs_class=None,
    outputs_coord=None,
    enc_topk_logits=None,
    enc_topk_bboxes=None,
    denoising_meta_values=None,
    predicted_corners=None,
    initial_reference_points=None,
    **kwargs,
):
    """Drop-in for transformers' ``Deimv2ForObjectDetectionLoss`` (same signature and returns).

    Returns ``(loss, loss_dict, auxiliary_outputs)``.

    The loss runs in float32 whatever the model's dtype (bf16/fp16 under autocast, float64 in a
    test): the matcher's costs and transformers' box-distance targets are written for float32.
    """
    if torch.is_autocast_enabled(device.type if isinstance(device, torch.device) else str(device)):
        with torch.autocast(torch.device(device).type, enabled=False):
            return deim_loss(
                logits,
                labels,
                device,
                pred_boxes,
                config,
                outputs_class,
                outputs_coord,
                enc_topk_logits,
                enc_topk_bboxes,
                denoising_meta_values,
                predicted_corners,
                initial_reference_points,
                **kwargs,
            )

    def f32(t):
        return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    outputs_class, outputs_coord, predicted_corners = f32(outputs_class), f32(outputs_coord), f32(predicted_corners)
    initial_reference_points, enc_topk_logits, enc_topk_bboxes = (
        f32(initial_reference_points),
        f32(enc_topk_logits),
        f32(enc_topk_bboxes),
    )
    labels = [{k: f32(v) for k, v in target.items()} for target in labels]
    criterion = DeimCriterion(config).to(device)
    coords = outputs_coord.clamp(min=0, max=1)
    if denoising_meta_values is not None:
        split = denoising_meta_values["dn_num_split"]
        dn_class, class_logits = torch.split(outputs_class, split, dim=2)
        dn_coords, coords = torch.split(coords, split, dim=2)
        dn_corners, corners = torch.split(predicted_corners, split, dim=2)
        dn_refs, refs = torch.split(initial_reference_points, split, dim=2)
    else:
        class_logits, corners, refs = outputs_class, predicted_corners, initial_reference_points

    pre, layers = _layered(class_logits, coords, corners, refs)
    outputs: dict[str, Any] = dict(layers[-1])
    if config.auxiliary_loss:
        outputs["aux_outputs"] = layers[:-1]
        outputs["pre_outputs"] = pre
        if enc_topk_logits is not None:
            outputs["enc_aux_outputs"] = [{"logits": enc_topk_logits, "pred_boxes": enc_topk_bboxes.clamp(0, 1)}]
        if denoising_meta_values is not None:
            dn_pre, dn_layers = _layered(dn_class, dn_coords, dn_corners, dn_refs)
            outputs["dn_outputs"] = dn_layers
            outputs["dn_pre_outputs"] = dn_pre
            outputs["denoising_meta_values"] = denoising_meta_values
    loss_dict = criterion(outputs, labels)
    return sum(loss_dict.values()), loss_dict, outputs.get("aux_outputs")


def install_deim_loss(model: torch.nn.Module) -> None:
    """Make ``model(pixel_values, labels=...)`` use :func:`deim_loss`."""
    target = model.module if hasattr(model, "module") else model
    target.loss_function = deim_loss
