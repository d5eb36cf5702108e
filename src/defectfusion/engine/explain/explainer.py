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

- **The text term per place** (``text_term``): what the fusion head adds at each place, ``g * (exp(s)
  * cos + beta)`` with the gate's sign (the cosine alone, ``similarity``, ignores gate, scale and
  sign). An explanation only when the query-selection head computes it (it scores exactly these
  places); through the decoder head it is descriptive, and the map's description says so.
- **Attribution** (:mod:`.attribution`, the model's own computation, no approximation): per class
  and per detection, ``gradcam`` (gradient x feature of the logit on the decoder's memory),
  ``text_gradcam`` (the same for the text term alone), ``sampling`` (where the queries' deformable
  attention read the features) and, for the confusable pair, ``contrast`` per class and ``pair``
  per detection (logit(class) - logit(other class)). Each detection's logit is split into the
  detector's own term, the text term and the LQE term.
- **The control** (``boxes``): the same queries' predicted boxes as score-weighted blobs, no
  gradient and no attention. A map kind that scores no better than it restates where the
  detections are (:mod:`.map_quality`, :mod:`.faithfulness`).

The figures and files are drawn and written by :mod:`defectfusion.report.explain`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...data.images import load_image
from ...data.transforms import content_size
from ...errors import ConfigError
from ...models.fusion import MAX_LOGIT_SCALE
from ...models.inference import InputSpec, prepare_images
from ...models.postprocess import clip_to_image, query_boxes_in_pixels, top_k_queries
from ...structures import DetectionMatch, Explanation
from .attribution import (
    LogitParts,
    TracedForward,
    blank_like,
    evaluation_layer,
    gradient_maps,
    logit_parts,
    sampling_map,
    traced_forward,
)
from .faithfulness import box_blob_map
from .map_quality import CONTROL_KIND

# What each map kind shows, in the words the figures and tables use.
MAP_KINDS: dict[str, str] = {
    "gradcam": "what raised the class score: gradient x (feature - blank-image feature) of its detections' logits",
    "pixel": "which pixels raised the class score: gradient x (pixel - blank pixel), slightly blurred",
    "text_gradcam": "what raised the text term (gate x text logit) of those logits: the descriptions' part",
    "sampling": "where its detections looked: the decoder's sampling points weighted by their attention",
    "contrast": "what raised the class's logit over its look-alike's (the confusable pair only): gradient x feature "
    "of logit(class) - logit(other)",
    "text_term": "the text term the fusion head adds at each place: gate x (scale x cosine + bias), signed",
    "similarity": "cosine similarity of each place's projected feature with the class text",
    "boxes": "the control: the same detections' predicted boxes as score-weighted blobs (no gradient, no attention)",
}

# Measured on the demo's text model, 160 test images (benchmarks/README.md): sampling points at the
# boxes (pointing game 0.93, AUROC 0.94); gradcam 0.91 / 0.74, pixel 0.90 / 0.62, similarity through
# the decoder head 0.11 / 0.39 (lower on the objects than on the background).
DEFAULT_MAP_KIND = "sampling"
QUERY_SELECTION_HEAD = "model.model.enc_score_head.fusion"
# Whether the per-place text term explains anything depends on which head computes it.
TEXT_TERM_NOTE = {
    True: "computed by the query-selection head's fusion, which scores exactly these places: the text's share of "
    "which places become queries (an explanation of query selection)",
    False: "computed by the decoder class head's fusion on encoder features it was never trained on: no objective "
    "aligns per-place features with the text, so this map is descriptive, not an explanation",
}
CLASS_QUERIES = 5  # detections of a class that make its class map
DETAILED_DETECTIONS = 3  # detections that get their own maps (the figure shows this many)


def require_fused(model: Any) -> None:
    if not getattr(model, "is_fused", False):
        raise ConfigError(
            "this detector has no text-fusion head, so there is no text-visual similarity to show; explain a fused "
            "checkpoint (e.g. RUN/phase1/best or RUN/final of a fusion run)"
        )


def _heads(model: Any) -> tuple[Any, str, str, Any, str]:
    """(map head, its path, note, query head, its path)."""
    layer = evaluation_layer(model)
    query_head = model.model.decoder.class_embed[layer].fusion
    query_path = f"model.model.decoder.class_embed[{layer}].fusion"
    enc = getattr(model.model.enc_score_head, "fusion", None)
    if enc is not None:
        return (
            enc,
            QUERY_SELECTION_HEAD,
            "the query-selection head's fusion, trained on these encoder features",
            query_head,
            query_path,
        )
    return (
        query_head,
        query_path,
        "the decoder class head's fusion (the model has no query-selection fusion head); it is trained on "
        "decoder query features, so on encoder features the maps are an approximation",
        query_head,
        query_path,
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


def _class_queries(scores: torch.Tensor, label: int, threshold: float) -> tuple[list[int], list[float]]:
    """The queries whose score for ``label`` passes ``threshold`` (best first, at most
    :data:`CLASS_QUERIES`), else the single best one: what a class map is made of."""
    column = scores[:, label]
    order = torch.argsort(column, descending=True)
    chosen = [int(q) for q in order[:CLASS_QUERIES] if column[q] >= threshold] or [int(order[0])]
    return chosen, [float(column[q]) for q in chosen]


def _class_maps(
    trace: TracedForward,
    parts: LogitParts,
    scores: torch.Tensor,
    threshold: float,
    size: tuple[int, int],
    query_boxes: torch.Tensor,
    pair_labels: tuple[int, int] | None,
) -> dict[str, torch.Tensor]:
    """Per kind, ``[C, H, W]``: each class's map from its best queries (:func:`_class_queries`).

    ``query_boxes``: ``[Q, 4]`` every query's box in canvas pixels (the ``boxes`` control draws the
    chosen queries' ones). ``contrast`` is made for the two classes of ``pair_labels`` only (the
    others get an all-zero map, not scored).
    """
    kinds = ["gradcam", "pixel", "text_gradcam", "sampling", CONTROL_KIND] + (["contrast"] if pair_labels else [])
    maps: dict[str, list[torch.Tensor]] = {kind: [] for kind in kinds}
    for label in range(scores.shape[1]):
        queries, weights = _class_queries(scores, label, threshold)
        logit = gradient_maps(trace, parts.logit[queries, label].sum(), size)
        maps["gradcam"].append(logit["gradcam"])
        maps["pixel"].append(logit["pixel"])
        maps["text_gradcam"].append(gradient_maps(trace, parts.text[queries, label].sum(), size)["gradcam"])
        maps["sampling"].append(sampling_map(trace, queries, size, weights))
        maps[CONTROL_KIND].append(box_blob_map(query_boxes[queries], torch.tensor(weights), size))
        if pair_labels:
            if label in pair_labels:
                other = pair_labels[1] if label == pair_labels[0] else pair_labels[0]
                margin = (parts.logit[queries, label] - parts.logit[queries, other]).sum()
                maps["contrast"].append(gradient_maps(trace, margin, size)["gradcam"])
            else:
                maps["contrast"].append(torch.zeros(size))
    return {kind: torch.stack(values) for kind, values in maps.items()}


def _text_term_maps(head: Any, cosine: torch.Tensor) -> torch.Tensor:
    """The signed text term ``g * (exp(s) * cos + beta)`` a fusion head adds at each place, from the cosines
    ``[C, ...]`` of the places' projected features: what the model adds, with the gate's sign."""
    scale = head.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).exp()
    return head.gate.detach() * (scale * cosine + head.logit_bias.detach())


def _detection_maps(
    trace: TracedForward, parts: LogitParts, query: int, label: int, other: int | None, size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    logit = gradient_maps(trace, parts.logit[query, label], size)
    maps = {
        "gradcam": logit["gradcam"],
        "pixel": logit["pixel"],
        "text_gradcam": gradient_maps(trace, parts.text[query, label], size)["gradcam"],
        "sampling": sampling_map(trace, [query], size),
    }
    if other is not None:
        difference = parts.logit[query, label] - parts.logit[query, other]
        maps["pair"] = gradient_maps(trace, difference, size, signed=True)["gradcam"]
    return maps


def _pair_margin(parts: LogitParts, query: int, label: int, other: int, other_name: str) -> dict[str, float | str]:
    def diff(t: torch.Tensor) -> float:
        return round(float((t[query, label] - t[query, other]).detach()), 5)

    return {"against": other_name, "margin": diff(parts.logit), "text": diff(parts.text), "base": diff(parts.base)}


def explain_image(
    model: Any,
    image: Any,
    *,
    threshold: float = 0.3,
    max_detections: int = 8,
    top_k: int = 300,
    device: str | torch.device = "cpu",
    pair: tuple[str, str] | None = None,
    attribution: bool = True,
    detailed: int = DETAILED_DETECTIONS,
) -> Explanation:
    """Similarity maps, attribution maps and detection matches of one image.

    ``image``: a path, a uint8 ``[3, H, W]`` tensor or a uint8 ``[H, W, 3]`` array. ``pair``: the
    confusable pair whose margin is explained for detections of either class. ``attribution``:
    False computes only the similarity maps and the matches (one forward pass, no gradients).
    ``detailed``: the best this many detections get their own maps (each costs backward passes).
    """
    require_fused(model)
    device = torch.device(device)
    model = model.to(device).eval()
    pixels_u8, source = _to_uint8_chw(image)
    meta = model.meta
    height, width = int(pixels_u8.shape[-2]), int(pixels_u8.shape[-1])
    pixel_values, _ = prepare_images([pixels_u8], InputSpec.of(meta))
    # Maps and boxes are computed on a canvas whose top-left (H, W) is the image: the whole model
    # input for the plain resize; for letterbox the input scaled so its content is the image, the
    # padding then cropped away (it never reaches a map or a score).
    content_h, content_w = content_size((height, width), meta.image_size, meta.resize)
    canvas = (meta.image_size[0] * height / content_h, meta.image_size[1] * width / content_w)
    H, W = round(canvas[0]), round(canvas[1])
    names = list(model.class_names)
    pair_labels = (names.index(pair[0]), names.index(pair[1])) if pair else None

    map_head, map_path, map_note, query_head, query_path = _heads(model)
    pixel_values = pixel_values.to(device)
    trace = traced_forward(model, pixel_values, blank_like(pixel_values) if attribution else None)
    outputs = trace.outputs

    # similarity maps: the decoder's memory (+ enc_output), exactly what the query-selection head scores
    level_maps, upsampled = [], []
    with torch.no_grad():
        for source_map in trace.sources:
            h, w = source_map.shape[-2:]
            feats = model.model.enc_output(source_map.detach().flatten(2).transpose(1, 2))  # [1, h*w, d]
            sim = _cosine(map_head, feats.float())[0].t().reshape(-1, h, w)  # [C, h, w]
            level_maps.append(sim.cpu())
            upsampled.append(F.interpolate(sim[None], size=(H, W), mode="bilinear", align_corners=False)[0])
    maps = torch.stack(upsampled).mean(0).cpu()
    text_term = _text_term_maps(map_head, maps)

    # detections, with the query each came from (the post-processor's top-k over queries x classes)
    logits, boxes = outputs.logits.detach().float(), outputs.pred_boxes.detach().float()
    top, labels, queries = top_k_queries(logits, min(top_k, logits.shape[1] * logits.shape[2]))
    xyxy = query_boxes_in_pixels(boxes, queries, torch.tensor([canvas], device=boxes.device))[0]
    xyxy = clip_to_image(xyxy, (height, width))  # as every other prediction path does
    top, labels, queries = top[0], labels[0], queries[0]
    keep = top >= threshold
    top, labels, queries, xyxy = (t[keep][:max_detections] for t in (top, labels, queries, xyxy))
    with torch.no_grad():
        similarity = _cosine(query_head, trace.query_features[queries].float())  # [n, C]

    parts = logit_parts(model, trace)
    scores = torch.sigmoid(logits[0])
    class_maps = {"similarity": maps, "text_term": text_term}
    if attribution:
        every_query = torch.arange(boxes.shape[1], device=boxes.device)[None]
        query_boxes = query_boxes_in_pixels(boxes, every_query, torch.tensor([canvas], device=boxes.device))[0]
        class_maps.update(_class_maps(trace, parts, scores, threshold, (H, W), query_boxes.cpu(), pair_labels))
    detections = []
    for i in range(len(top)):
        query, label = int(queries[i]), int(labels[i])
        other = None
        if pair_labels and label in pair_labels:
            other = pair_labels[1] if label == pair_labels[0] else pair_labels[0]
        detections.append(
            DetectionMatch(
                [float(v) for v in xyxy[i].tolist()],
                label,
                names[label],
                float(top[i]),
                query,
                [float(v) for v in similarity[i].tolist()],
                logit_parts={
                    "base": float(parts.base[query, label].detach()),
                    "text": float(parts.text[query, label].detach()),
                    "quality": float(parts.quality[query, label].detach()),
                    "logit": float(parts.logit[query, label].detach()),
                    "gate": parts.gate,
                },
                maps=_detection_maps(trace, parts, query, label, other, (H, W)) if attribution and i < detailed else {},
                pair_margin=_pair_margin(parts, query, label, other, names[other]) if other is not None else None,
            )
        )
    if (H, W) != (height, width):  # letterbox: the padding cropped off every map
        maps = maps[..., :height, :width].contiguous()
        class_maps = {k: v[..., :height, :width].contiguous() for k, v in class_maps.items()}
        for d in detections:
            d.maps = {k: v[..., :height, :width].contiguous() for k, v in d.maps.items()}
    fusion = model.meta.fusion
    text = {"descriptions": fusion.descriptions, "encoder": fusion.encoder, "kind": fusion.text}
    kinds = {kind: MAP_KINDS[kind] for kind in class_maps}
    kinds["similarity"] = f"{MAP_KINDS['similarity']}, by {map_note}"
    kinds["text_term"] = f"{MAP_KINDS['text_term']}; {TEXT_TERM_NOTE[map_path == QUERY_SELECTION_HEAD]}"
    return Explanation(
        pixels_u8.permute(1, 2, 0).cpu().numpy(),
        names,
        maps,
        level_maps,
        map_path,
        map_note,
        query_path,
        detections,
        float(threshold),
        source,
        text,
        class_maps=class_maps,
        map_kinds=kinds,
        pair=(pair[0], pair[1]) if pair else None,
        default_kind=DEFAULT_MAP_KIND,
    )
