"""Make ``transformers``' DEIMv2 compute what the original DEIMv2 code computes.

transformers 5.23's ``Deimv2ForObjectDetection`` departs from the original architecture
(Intellindust-AI-Lab/DEIMv2) in a handful of places. Checkpoints trained with the original code
(the user's phase-1 model) only reproduce their outputs once these are undone, and models we
train ourselves use the same semantics so they behave the same way when loaded anywhere.

Differences, and how each is undone here (all in :func:`apply_original_semantics`, plus two
config values set by the presets and the converter):

1. The ViT backbone applies a final LayerNorm even when its stages are not normalised; the
   original ViT-Tiny(+) has none -> the backbone's ``norm`` becomes an identity.
2. With ``config.eval_size`` set, the AIFI layer drops its position embedding in eval mode ->
   ``eval_size`` is kept ``None`` (the embedding is computed for the actual size, as the original
   does for its ``eval_spatial_size``).
3. ``enc_output`` (Linear + LayerNorm) before the encoder heads does not exist in DEIMv2 ->
   identity.
4. The box/query heads (``enc_bbox_head``, ``pre_bbox_head``, ``bbox_embed``, the LQE MLPs) use a
   hard-coded ReLU; the original uses the config's MLP activation (SiLU) -> activation swapped.
5. The query position embedding is recomputed in every decoder layer; the original computes it
   once from the initial reference boxes -> :class:`OriginalDeimv2Decoder`.
6. The ViT key bias and LayerNorm eps (1e-6) -> set in the backbone config (presets, converter).
7. For non-square feature maps the AIFI sin-cos embedding is laid out differently -> the
   original's layout, :class:`OriginalSinePositionEmbedding`.

``semantics: transformers`` skips all of this, for models trained with transformers itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2CLS
from transformers.models.deimv2 import modeling_deimv2 as hf
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs


class OriginalSinePositionEmbedding(nn.Module):
    """2-D sin-cos embedding with the original RT-DETR/DEIMv2 layout (also for non-square maps)."""

    def __init__(self, embed_dim: int, temperature: float = 10000.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.temperature = temperature

    def forward(self, width: int, height: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        """Returns ``[1, height * width, embed_dim]``."""
        pos_dim = self.embed_dim // 4
        omega = torch.arange(pos_dim, dtype=torch.float32, device=device) / pos_dim
        omega = 1.0 / (self.temperature**omega)
        # The original meshes (w, h) with "ij" indexing and flattens that grid.
        grid_w, grid_h = torch.meshgrid(
            torch.arange(int(width), dtype=torch.float32, device=device),
            torch.arange(int(height), dtype=torch.float32, device=device),
            indexing="ij",
        )
        out_w = grid_w.flatten()[:, None] @ omega[None]
        out_h = grid_h.flatten()[:, None] @ omega[None]
        embedding = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
        return embedding[None].to(dtype)


class OriginalDeimv2Decoder(hf.Deimv2Decoder):
    """``Deimv2Decoder`` with the original's query position embedding: computed once, reused.

    Same modules and weights as transformers' decoder; only the loop differs.
    """

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        encoder_hidden_states,
        reference_points,
        inputs_embeds,
        spatial_shapes,
        level_start_index=None,
        spatial_shapes_list=None,
        encoder_attention_mask=None,
        memory_mask=None,
        **kwargs,
    ):
        hidden_states = inputs_embeds
        intermediate, inter_refs, inter_logits, inter_corners, initial_refs = (), (), (), (), ()
        output_detach = pred_corners_undetach = 0

        project = hf.weighting_function(self.max_num_bins, self.up, self.reg_scale)
        ref_points_detach = F.sigmoid(reference_points)
        query_pos_embed = self.query_pos_head(ref_points_detach).clamp(min=-10, max=10)

        for i, decoder_layer in enumerate(self.layers):
            hidden_states = decoder_layer(
                hidden_states,
                position_embeddings=query_pos_embed,
                reference_points=ref_points_detach.unsqueeze(2),
                spatial_shapes=spatial_shapes,
                spatial_shapes_list=spatial_shapes_list,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                **kwargs,
            )
            if i == 0:
                new_reference_points = F.sigmoid(
                    self.pre_bbox_head(hidden_states) + hf.inverse_sigmoid(ref_points_detach)
                )
                ref_points_initial = new_reference_points.detach()

            pred_corners = self.bbox_embed[i](hidden_states + output_detach) + pred_corners_undetach
            inter_ref_bbox = hf.distance2bbox(ref_points_initial, self.integral(pred_corners, project), self.reg_scale)
            pred_corners_undetach = pred_corners
            ref_points_detach = inter_ref_bbox.detach()
            output_detach = hidden_states.detach()
            intermediate += (hidden_states,)

            if self.training or i == self.eval_idx:
                scores = self.class_embed[i](hidden_states)
                if i == 0:
                    # The pre-head prediction of layer 0 is supervised too (before LQE).
                    inter_logits += (scores,)
                    inter_refs += (new_reference_points,)
                scores = self.lqe_layers[i](scores, pred_corners)
                inter_logits += (scores,)
                inter_refs += (inter_ref_bbox,)
                initial_refs += (ref_points_initial,)
                inter_corners += (pred_corners,)

        return hf.Deimv2DecoderOutput(
            last_hidden_state=hidden_states,
            intermediate_hidden_states=torch.stack(intermediate),
            intermediate_logits=torch.stack(inter_logits, dim=1),
            intermediate_reference_points=torch.stack(inter_refs, dim=1),
            intermediate_predicted_corners=torch.stack(inter_corners, dim=1),
            initial_reference_points=torch.stack(initial_refs, dim=1),
        )


def apply_original_semantics(detector: hf.Deimv2ForObjectDetection) -> None:
    """Undo transformers' departures from the original DEIMv2 on a freshly built detector, in place.

    Call it before loading weights: it removes ``enc_output`` and, for ViT-Tiny(+) backbones,
    the backbone's final norm, so their (nonexistent) weights are not expected.
    """
    config = detector.config
    model = detector.model
    if config.eval_size is not None:
        raise ValueError("original semantics need config.eval_size = None (see difference 2)")

    backbone_config = config.backbone_config
    if getattr(backbone_config, "model_type", None) == "dinov3_vit" and not backbone_config.apply_layernorm:
        model.conv_encoder.backbone.norm = nn.Identity()

    model.enc_output = nn.Identity()

    activation = config.decoder_activation_function
    mlps = [model.enc_bbox_head, model.decoder.pre_bbox_head, *model.decoder.bbox_embed]
    mlps += [lqe.reg_conf for lqe in model.decoder.lqe_layers]
    for mlp in mlps:
        mlp.act = ACT2CLS[activation]()

    if isinstance(model.encoder, hf.Deimv2HybridEncoder):
        for aifi in model.encoder.aifi:
            aifi.position_embedding = OriginalSinePositionEmbedding(
                config.encoder_hidden_dim, config.positional_encoding_temperature
            )

    # Same state, different loop (difference 5); the decoder's modules and weights are untouched.
    model.decoder.__class__ = OriginalDeimv2Decoder
