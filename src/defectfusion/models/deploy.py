"""An export-friendly forward for a :class:`~.detector.DefectDetector`: the model an ONNX file holds.

:class:`DeployDetector` reuses the detector's modules and weights (nothing is copied) but runs its
own inference-only forward, fixed to one input size, with the post-processing inside:

    images [B, 3, H, W] (normalised)  ->  labels [B, K], boxes [B, K, 4] (xyxy pixels), scores [B, K]

It computes what ``DefectDetector.forward`` followed by :func:`~.postprocess.postprocess`
computes (proved by the parity tests), in the form the ONNX exporters and runtimes handle, like the
original DEIMv2 code's deploy mode:

- everything that depends only on the input size is computed once, here, for the export size:
  the query-selection anchors and their valid mask (no lru cache; transformers caches them keyed
  by the shapes, and its cached tensors are what the tracer would bake in), the DINOv3 RoPE
  tables, the AIFI position embeddings, the FDR weighting function; every spatial shape is a
  Python int, so no ``torch.tensor(spatial_shapes)`` and no data-dependent checks
  (``torch_compilable_check``) reach the graph;
- the DINOv3 ViT concatenates only the prefix tokens that exist: with no register tokens
  (ViT-Tiny(+)), transformers expands and concatenates a zero-length tensor, which the
  TorchScript exporter records as one token, so every size derived from the token count (the
  RoPE prefix split) is wrong in the graph and onnxruntime rejects it;
- attention is written out (matmul, softmax, matmul) instead of going through transformers'
  attention-function registry (SDPA with Python-side mask checks);
- the decoder stops at ``eval_idx`` (later layers do not change the eval outputs) and has no
  denoising or training branches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.deimv2 import modeling_deimv2 as hf

from ..errors import ConfigError
from .detector import DefectDetector, check_image_size
from .postprocess import query_boxes_in_pixels, top_k_queries
from .semantics import OriginalDeimv2Decoder

DEFAULT_TOP_K = 300


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """``[B, h, N, d]`` x3 -> ``[B, N, h * d]``: plain softmax attention."""
    weights = torch.softmax(torch.matmul(query, key.transpose(-1, -2)) * scaling, dim=-1)
    out = torch.matmul(weights, value).transpose(1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1)


class DeployDetector(nn.Module):
    """Inference-only, fixed-size forward of a detector, post-processing included.

    Args:
        detector: the model; its modules are shared, not copied, and it is put in eval mode.
        image_size: ``(H, W)`` the graph is built for; default: the detector's.
        top_k: detections kept per image (capped at ``num_queries * num_classes``).

    Shapes:
        ``forward(images [B, 3, H, W] float, orig_target_sizes [B, 2] int64 (H, W))`` ->
        ``labels [B, K] int64, boxes [B, K, 4] float (x1, y1, x2, y2 in original pixels), scores [B, K]``
        sorted by score. ``raw(images)`` -> ``logits [B, Q, C], pred_boxes [B, Q, 4]`` (normalised cxcywh),
        what ``detector(pixel_values=images)`` returns.
    """

    def __init__(self, detector: DefectDetector, image_size: Sequence[int] | None = None, top_k: int = DEFAULT_TOP_K):
        super().__init__()
        config = detector.config
        size = tuple(int(s) for s in (image_size or detector.meta.image_size))
        check_image_size(config, size)
        if config.decoder_method != "default":
            raise ConfigError(f"export supports decoder_method 'default', this model uses {config.decoder_method!r}")
        if config.learn_initial_query:
            raise ConfigError("export does not support learn_initial_query models")
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {top_k}")
        self.detector = detector.eval()
        self.image_size = size
        self.num_classes = config.num_labels
        self.num_queries = config.num_queries
        self.top_k = min(int(top_k), self.num_queries * self.num_classes)
        model = detector.model
        self.is_vit = isinstance(model.conv_encoder, hf.Deimv2DINOv3ConvEncoder)
        if not self.is_vit and not hasattr(model.conv_encoder.model, "embedder"):
            raise ConfigError(
                f"export supports DINOv3 and HGNetV2 backbones, not {type(model.conv_encoder.model).__name__}"
            )
        decoder = model.decoder
        self.eval_idx = decoder.eval_idx
        self.query_pos_once = isinstance(decoder, OriginalDeimv2Decoder)

        with torch.no_grad():
            dtype = next(detector.parameters()).dtype
            probe = torch.zeros(1, 3, *size, dtype=dtype)
            if self.is_vit:
                self._setup_vit(probe)
            feats = self._conv_encoder(probe)
            self.encoder_shapes = [tuple(f.shape[-2:]) for f in feats]
            self._setup_aifi(dtype)
            maps = self._encoder(feats)
            sources = self._sources(maps)
            self.spatial_shapes = [tuple(int(v) for v in s.shape[-2:]) for s in sources]
            self.sequence_length = sum(h * w for h, w in self.spatial_shapes)
            self._setup_anchors(dtype)
            project = hf.weighting_function(decoder.max_num_bins, decoder.up, decoder.reg_scale)
        self.register_buffer("project", project.detach().clone(), persistent=False)

    # ------------------------------------------------------------------ setup (export-size constants)

    def _setup_vit(self, probe: torch.Tensor) -> None:
        backbone = self.detector.model.conv_encoder.backbone
        config = backbone.config
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        self.patches = (probe.shape[2] // patch, probe.shape[3] // patch)
        self.num_prefix = 1 + int(config.num_register_tokens)
        cos, sin = backbone.rope_embeddings(probe)
        self.register_buffer("rope_cos", cos.detach().clone(), persistent=False)
        self.register_buffer("rope_sin", sin.detach().clone(), persistent=False)
        wanted = [backbone.stage_names.index(name) for name in backbone.out_features]
        self.vit_stages = wanted
        self.vit_last_stage = len(backbone.stage_names) - 1

    def _setup_aifi(self, dtype: torch.dtype) -> None:
        encoder = self.detector.model.encoder
        self.aifi_pos: list[str | None] = []
        if not isinstance(encoder, hf.Deimv2HybridEncoder) or self.detector.config.encoder_layers == 0:
            return
        for i, enc_ind in enumerate(encoder.encode_proj_layers):
            aifi = encoder.aifi[i]
            height, width = self.encoder_shapes[enc_ind]
            if aifi.eval_size is not None:  # transformers drops the embedding in eval mode then
                self.aifi_pos.append(None)
                continue
            pos = aifi.position_embedding(width=width, height=height, device=torch.device("cpu"), dtype=dtype)
            name = f"aifi_pos_{i}"
            self.register_buffer(name, pos.detach().clone(), persistent=False)
            self.aifi_pos.append(name)

    def _setup_anchors(self, dtype: torch.dtype) -> None:
        model = self.detector.model
        if model.config.anchor_image_size is None:
            anchors, valid = model.generate_anchors(tuple(self.spatial_shapes), device="cpu", dtype=dtype)
        else:
            anchors, valid = model.anchors, model.valid_mask
            if anchors.shape[1] != self.sequence_length:
                raise ConfigError(
                    f"the model's fixed anchors (anchor_image_size {list(model.config.anchor_image_size)}) do not fit "
                    f"the export size {list(self.image_size)}; export at the anchor size"
                )
        # Copies: transformers' lru cache hands out the same tensors to every caller.
        self.register_buffer("anchors", anchors.detach().to(dtype).clone(), persistent=False)
        self.register_buffer("valid_mask", valid.detach().to(dtype).clone(), persistent=False)

    # ------------------------------------------------------------------ backbone + encoder

    def _vit_layer(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        attn = layer.attention
        tokens, heads, head_dim, prefix = hidden.shape[1], attn.num_heads, attn.head_dim, self.num_prefix

        def split(proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
            return proj(x).reshape(-1, tokens, heads, head_dim).transpose(1, 2)

        normed = layer.norm1(hidden)
        q, k, v = split(attn.q_proj, normed), split(attn.k_proj, normed), split(attn.v_proj, normed)
        cos, sin = self.rope_cos, self.rope_sin
        # RoPE on the patch tokens only; the prefix (CLS + registers) is left as it is.
        q = torch.cat([q[:, :, :prefix], q[:, :, prefix:] * cos + _rotate_half(q[:, :, prefix:]) * sin], dim=2)
        k = torch.cat([k[:, :, :prefix], k[:, :, prefix:] * cos + _rotate_half(k[:, :, prefix:]) * sin], dim=2)
        out = attn.o_proj(_attention(q, k, v, attn.scaling))
        hidden = hidden + layer.layer_scale1(out)
        return hidden + layer.layer_scale2(layer.mlp(layer.norm2(hidden)))

    def _vit_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        backbone = self.detector.model.conv_encoder.backbone
        embeddings = backbone.embeddings
        patches = embeddings.patch_embeddings(images).flatten(2).transpose(1, 2)
        prefix = embeddings.cls_token
        if self.num_prefix > 1:
            prefix = torch.cat([prefix, embeddings.register_tokens], dim=1)
        hidden = torch.cat([prefix.expand(patches.shape[0], self.num_prefix, patches.shape[2]), patches], dim=1)
        stages = [hidden]
        for layer in backbone.model.layer[: max(self.vit_stages)]:
            hidden = self._vit_layer(layer, hidden)
            stages.append(hidden)
        height, width = self.patches
        maps = []
        for idx in self.vit_stages:
            state = stages[idx]
            if idx == self.vit_last_stage or backbone.config.apply_layernorm:
                state = backbone.norm(state)
            tokens = state[:, self.num_prefix :]
            maps.append(tokens.reshape(-1, height, width, tokens.shape[-1]).permute(0, 3, 1, 2))
        return maps

    def _conv_encoder(self, images: torch.Tensor) -> list[torch.Tensor]:
        conv_encoder = self.detector.model.conv_encoder
        if not self.is_vit:
            backbone = conv_encoder.model
            stem = backbone.embedder
            x = stem.stem1(images)
            x = F.pad(x, (0, 1, 0, 1))
            branch = stem.stem2b(F.pad(stem.stem2a(x), (0, 1, 0, 1)))
            x = stem.stem4(stem.stem3(torch.cat([stem.pool(x), branch], dim=1)))
            states = [x]
            for stage in backbone.encoder.stages:
                x = stage(x)
                states.append(x)
            feats = [states[backbone.stage_names.index(name)] for name in backbone.out_features]
            return [proj(f) for proj, f in zip(conv_encoder.encoder_input_proj, feats, strict=True)]
        maps = self._vit_features(images)
        height, width = self.patches
        semantic = []
        for i, fmap in enumerate(maps):
            scale = 2.0 ** (len(maps) - 2 - i)
            semantic.append(
                F.interpolate(
                    fmap, size=[int(height * scale), int(width * scale)], mode="bilinear", align_corners=False
                )
            )
        detail = conv_encoder.spatial_tuning_adapter(images)
        return [
            proj(torch.cat([s, d], dim=1))
            for proj, s, d in zip(conv_encoder.fusion_proj, semantic, detail, strict=True)
        ]

    def _encoder_layer(self, layer: nn.Module, hidden: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        residual = hidden
        if layer.normalize_before:
            hidden = layer.self_attn_layer_norm(hidden)
        hidden = residual + self._self_attention(layer.self_attn, hidden, pos)
        if not layer.normalize_before:
            hidden = layer.self_attn_layer_norm(hidden)
        if layer.normalize_before:
            hidden = layer.final_layer_norm(hidden)
        hidden = hidden + layer.mlp(hidden)
        if not layer.normalize_before:
            hidden = layer.final_layer_norm(hidden)
        return hidden

    def _encoder(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        encoder = self.detector.model.encoder
        if isinstance(encoder, hf.Deimv2LiteEncoder):
            proj = [encoder.input_proj[i](f) for i, f in enumerate(feats)]
            proj.append(encoder.down_conv1(encoder.down_pool1(proj[-1])))
            proj[-1] = encoder.bi_fusion_conv(proj[-1] + F.adaptive_avg_pool2d(proj[-1], 1))
            first = encoder.fpn_block(proj[0] + F.interpolate(proj[1], scale_factor=2.0, mode="nearest"))
            second = encoder.pan_block(proj[1] + encoder.down_conv2(encoder.down_pool2(first)))
            return [first, second]
        maps = list(feats)
        for i, enc_ind in enumerate(encoder.encode_proj_layers[: len(self.aifi_pos)]):
            fmap = maps[enc_ind]
            channels, height, width = fmap.shape[1:]
            hidden = fmap.flatten(2).transpose(1, 2)
            pos = getattr(self, self.aifi_pos[i]) if self.aifi_pos[i] is not None else None
            for layer in encoder.aifi[i].layers:
                hidden = self._encoder_layer(layer, hidden, pos)
            maps[enc_ind] = hidden.transpose(1, 2).reshape(-1, channels, height, width)
        fpn = [maps[-1]]
        for idx, (lateral, block) in enumerate(zip(encoder.lateral_convs, encoder.fpn_blocks, strict=True)):
            top = lateral(fpn[-1])
            fpn[-1] = top
            top = F.interpolate(top, scale_factor=2.0, mode="nearest")
            fpn.append(block(hf.fuse_feature_maps(top, maps[encoder.num_fpn_stages - idx - 1], encoder.fuse_op)))
        fpn.reverse()
        pan = [fpn[0]]
        for idx, (down, block) in enumerate(zip(encoder.downsample_convs, encoder.pan_blocks, strict=True)):
            pan.append(block(hf.fuse_feature_maps(down(pan[-1]), fpn[idx + 1], encoder.fuse_op)))
        return pan

    def _sources(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        model = self.detector.model
        sources = [model.decoder_input_proj[level](m) for level, m in enumerate(maps)]
        # transformers makes every extra level from the last encoder map
        for i in range(len(sources), model.config.num_feature_levels):
            sources.append(model.decoder_input_proj[i](maps[-1]))
        return sources

    # ------------------------------------------------------------------ decoder

    def _self_attention(self, attn: nn.Module, hidden: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        length, head_dim = hidden.shape[1], attn.head_dim
        qk_input = hidden if pos is None else hidden + pos

        def split(proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
            return proj(x).reshape(-1, length, proj.out_features // head_dim, head_dim).transpose(1, 2)

        out = _attention(
            split(attn.q_proj, qk_input), split(attn.k_proj, qk_input), split(attn.v_proj, hidden), attn.scaling
        )
        return attn.o_proj(out)

    def _deformable_attention(
        self, attn: nn.Module, hidden: torch.Tensor, reference: torch.Tensor, memory: torch.Tensor
    ) -> torch.Tensor:
        """Multi-scale deformable attention with 4-d reference boxes; spatial shapes are Python ints."""
        queries, heads = hidden.shape[1], attn.n_heads
        head_dim = attn.d_model // heads
        points = attn.num_points_list
        total = sum(points)
        value = memory.reshape(-1, self.sequence_length, heads, head_dim)
        offsets = attn.sampling_offsets(hidden).reshape(-1, queries, heads, total, 2)
        weights = torch.softmax(attn.attention_weights(hidden).reshape(-1, queries, heads, total), dim=-1)
        scale = attn.num_points_scale.to(hidden.dtype).unsqueeze(-1)
        # reference [B, Q, 1, 4] (cx, cy, w, h) -> sampling locations [B, Q, heads, P, 2]
        locations = reference[:, :, None, :, :2] + offsets * scale * reference[:, :, None, :, 2:] * attn.offset_scale

        values = value.permute(0, 2, 3, 1).flatten(0, 1).split([h * w for h, w in self.spatial_shapes], dim=-1)
        grids = (2 * locations - 1).permute(0, 2, 1, 3, 4).flatten(0, 1).split(points, dim=-2)
        sampled = []
        for (height, width), level_value, grid in zip(self.spatial_shapes, values, grids, strict=True):
            level_value = level_value.reshape(-1, head_dim, height, width)
            sampled.append(F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        weights = weights.permute(0, 2, 1, 3).reshape(-1, 1, queries, total)
        out = (torch.cat(sampled, dim=-1) * weights).sum(-1).reshape(-1, heads * head_dim, queries)
        return out.transpose(1, 2)

    def _decoder_layer(
        self, layer: nn.Module, hidden: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, memory: torch.Tensor
    ) -> torch.Tensor:
        hidden = layer.self_attn_layer_norm(hidden + self._self_attention(layer.self_attn, hidden, pos))
        residual = hidden
        cross = self._deformable_attention(layer.encoder_attn, hidden + pos, reference, memory)
        if layer.gateway is not None:
            hidden = layer.gateway(residual, cross)
        else:
            hidden = layer.encoder_attn_layer_norm(residual + cross)
        return layer.final_layer_norm(hidden + layer.mlp(hidden))

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B, 3, H, W]`` -> ``logits [B, Q, C]``, ``pred_boxes [B, Q, 4]`` (normalised cxcywh)."""
        model = self.detector.model
        memory = torch.cat(
            [s.flatten(2).transpose(1, 2) for s in self._sources(self._encoder(self._conv_encoder(images)))], dim=1
        )

        # query selection: the top-Q encoder positions become the decoder's queries
        output_memory = model.enc_output(self.valid_mask * memory)
        enc_class = model.enc_score_head(output_memory)
        enc_coord = model.enc_bbox_head(output_memory) + self.anchors
        _, index = torch.topk(enc_class.max(-1).values, self.num_queries, dim=1)
        reference = enc_coord.gather(1, index.unsqueeze(-1).expand(-1, -1, enc_coord.shape[-1]))
        hidden = output_memory.gather(1, index.unsqueeze(-1).expand(-1, -1, output_memory.shape[-1]))

        decoder = model.decoder
        ref_detach = torch.sigmoid(reference)
        pos = decoder.query_pos_head(ref_detach).clamp(min=-10, max=10)
        output_detach = corners_undetach = 0
        for i in range(self.eval_idx + 1):
            if not self.query_pos_once:
                pos = decoder.query_pos_head(ref_detach).clamp(min=-10, max=10)
            hidden = self._decoder_layer(decoder.layers[i], hidden, pos, ref_detach.unsqueeze(2), memory)
            if i == 0:
                ref_initial = torch.sigmoid(decoder.pre_bbox_head(hidden) + hf.inverse_sigmoid(ref_detach))
            corners = decoder.bbox_embed[i](hidden + output_detach) + corners_undetach
            ref_detach = hf.distance2bbox(ref_initial, decoder.integral(corners, self.project), decoder.reg_scale)
            corners_undetach, output_detach = corners, hidden
        logits = decoder.lqe_layers[self.eval_idx](decoder.class_embed[self.eval_idx](hidden), corners)
        return logits, ref_detach

    def postprocess(
        self, logits: torch.Tensor, pred_boxes: torch.Tensor, orig_target_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The original DEIMv2 post-processor (the core :func:`~.postprocess.top_k_queries` shares)."""
        scores, labels, queries = top_k_queries(logits, self.top_k)
        return labels, query_boxes_in_pixels(pred_boxes, queries, orig_target_sizes), scores

    def forward(
        self, images: torch.Tensor, orig_target_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, pred_boxes = self.raw(images)
        return self.postprocess(logits, pred_boxes, orig_target_sizes)
