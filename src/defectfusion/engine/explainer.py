"""Why a box was called a crack and not a scratch: text-visual similarity maps and per-detection matches.

For one image and a fused detector:

- **Similarity maps.** The encoder's multi-scale feature maps (``encoder_last_hidden_state``,
  ``[B, d, h, w]`` per level) go through the decoder's input projection (and ``enc_output``),
  exactly as the features the query-selection head scores, and then through a fusion head's
  projection ``P`` into the text space. The cosine similarity of every position with each class's
  text embedding gives one ``[h, w]`` map per class and level; each is upsampled bilinearly to the
  image size and the levels are averaged. The head used is the query-selection head's fusion
  (``model.model.enc_score_head.fusion``), which is trained on these very features, when the model
  has one; otherwise the evaluation decoder layer's head (``model.model.decoder.class_embed[i].fusion``),
  which is trained on decoder query features: an approximation, and the output says so.
- **Detection matches.** For each detection, the query feature it came from (the hidden state the
  evaluation decoder layer's class head scored) is projected by that head, and its cosine
  similarity with every class's text embedding is reported: what the box matched in text.

The figures and files are drawn and written by :mod:`defectfusion.report.explain`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import load_image
from ..errors import ConfigError
from ..models.postprocess import query_boxes_in_pixels, top_k_queries
from ..structures import DetectionMatch, Explanation
from .predictor import prepare_images


def require_fused(model: Any) -> None:
    if not getattr(model, "is_fused", False):
        raise ConfigError(
            "this detector has no text-fusion head, so there is no text-visual similarity to show; explain a fused "
            "checkpoint (e.g. RUN/phase1/best or RUN/final of a fusion run)"
        )


def _heads(model: Any) -> tuple[Any, str, str, Any, str, int]:
    """(map head, its path, note, query head, its path, eval layer)."""
    decoder = model.model.decoder
    layer = int(getattr(decoder, "eval_idx", len(decoder.class_embed) - 1))
    query_head = decoder.class_embed[layer].fusion
    query_path = f"model.model.decoder.class_embed[{layer}].fusion"
    enc = getattr(model.model.enc_score_head, "fusion", None)
    if enc is not None:
        return (
            enc,
            "model.model.enc_score_head.fusion",
            "the query-selection head's fusion, trained on these encoder features",
            query_head,
            query_path,
            layer,
        )
    return (
        query_head,
        query_path,
        "the decoder class head's fusion (the model has no query-selection fusion head); it is trained on "
        "decoder query features, so on encoder features the maps are an approximation",
        query_head,
        query_path,
        layer,
    )


def _cosine(head: Any, features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``[.., C]`` of the head's projection of ``features`` with each class text.

    The head's own ``similarity`` assumes unit-norm text embeddings (true as built); normalising
    here keeps the numbers cosines even for a checkpoint whose stored embeddings drifted.
    """
    projected = F.normalize(head.proj(features), dim=-1)
    return projected @ F.normalize(head.text_embeddings.float(), dim=-1).t()


def _to_uint8_chw(image: Any) -> tuple[torch.Tensor, str | None]:
    if isinstance(image, (str, os.PathLike)):
        return load_image(image).as_subclass(torch.Tensor), str(image)
    if isinstance(image, np.ndarray):
        array = image if image.ndim == 3 and image.shape[-1] == 3 else None
        if array is None or array.dtype != np.uint8:
            raise ConfigError(f"explain: image array must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1), None
    tensor = torch.as_tensor(image)
    if tensor.dtype != torch.uint8 or tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ConfigError(f"explain: image tensor must be uint8 [3, H, W], got {tensor.dtype} {list(tensor.shape)}")
    return tensor, None


@torch.inference_mode()
def explain_image(
    model: Any,
    image: Any,
    *,
    threshold: float = 0.3,
    max_detections: int = 8,
    top_k: int = 300,
    device: str | torch.device = "cpu",
) -> Explanation:
    """Similarity maps and detection matches of one image.

    ``image``: a path, a uint8 ``[3, H, W]`` tensor or a uint8 ``[H, W, 3]`` array.
    """
    require_fused(model)
    device = torch.device(device)
    model = model.to(device).eval()
    pixels_u8, source = _to_uint8_chw(image)
    H, W = int(pixels_u8.shape[-2]), int(pixels_u8.shape[-1])
    pixel_values, _ = prepare_images([pixels_u8], model.meta.image_size, model.meta.image_mean, model.meta.image_std)

    map_head, map_path, map_note, query_head, query_path, layer = _heads(model)
    captured: list[torch.Tensor] = []
    hook = model.model.decoder.class_embed[layer].register_forward_hook(
        lambda _m, inputs, _o: captured.append(inputs[0].detach())
    )
    try:
        outputs = model(pixel_values=pixel_values.to(device))
    finally:
        hook.remove()
    if not captured:
        raise RuntimeError(f"the class head of decoder layer {layer} was not called; cannot read query features")
    query_features = captured[-1][0]  # [Q, d]

    # similarity maps: encoder maps -> the decoder's input projection (+ enc_output) -> fusion projection
    level_maps, upsampled = [], []
    for level, fmap in enumerate(outputs.encoder_last_hidden_state):
        source_map = model.model.decoder_input_proj[level](fmap)  # [1, d, h, w]
        h, w = source_map.shape[-2:]
        feats = model.model.enc_output(source_map.flatten(2).transpose(1, 2))  # [1, h*w, d]
        sim = _cosine(map_head, feats.float())[0].t().reshape(-1, h, w)  # [C, h, w]
        level_maps.append(sim.cpu())
        upsampled.append(F.interpolate(sim[None], size=(H, W), mode="bilinear", align_corners=False)[0])
    maps = torch.stack(upsampled).mean(0).cpu()

    # detections, with the query each came from (the post-processor's top-k over queries x classes)
    logits, boxes = outputs.logits.float(), outputs.pred_boxes.float()
    top, labels, queries = top_k_queries(logits, min(top_k, logits.shape[1] * logits.shape[2]))
    xyxy = query_boxes_in_pixels(boxes, queries, torch.tensor([[H, W]], device=boxes.device))[0]
    top, labels, queries = top[0], labels[0], queries[0]
    keep = top >= threshold
    top, labels, queries, xyxy = (t[keep][:max_detections] for t in (top, labels, queries, xyxy))
    similarity = _cosine(query_head, query_features[queries].float())  # [n, C]
    names = model.class_names
    detections = [
        DetectionMatch(
            [float(v) for v in xyxy[i].tolist()],
            int(labels[i]),
            names[int(labels[i])],
            float(top[i]),
            int(queries[i]),
            [float(v) for v in similarity[i].tolist()],
        )
        for i in range(len(top))
    ]
    fusion = model.meta.fusion
    text = {"descriptions": fusion.descriptions, "encoder": fusion.encoder, "kind": fusion.text}
    return Explanation(
        pixels_u8.permute(1, 2, 0).cpu().numpy(),
        list(names),
        maps,
        level_maps,
        map_path,
        map_note,
        query_path,
        detections,
        float(threshold),
        source,
        text,
    )
