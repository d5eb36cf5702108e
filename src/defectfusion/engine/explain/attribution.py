"""Per-detection attribution: which encoder positions raised a detection's class logit, and where its query looked.

One forward pass is traced (:func:`traced_forward`) with three kinds of hooks:

- the decoder's input projections (``model.model.decoder_input_proj[l]``, one per feature level)
  return their output as a fresh leaf that requires grad: these ``[1, d, h, w]`` maps are the
  memory every decoder layer samples, so a gradient with respect to them is exactly how the
  encoder's features moved a detection's logit (the decoder's queries and reference boxes are
  detached from the encoder in DEIMv2, so nothing reaches the logits another way);
- the evaluation decoder layer's class head records its input (the query features ``[1, Q, H]``,
  still in the graph), so the logit splits into the detector's own term, the text term
  ``g * text`` and the LQE quality term;
- every decoder layer's deformable cross-attention records its sampling locations and attention
  weights: where each query read the feature maps, and how much.

:func:`gradient_maps` turns a scalar (a logit, a text term, a logit difference) into a map: per
level the channel sum of gradient x (activation - reference activation), spread over the image
pixels each cell covers (a density, so levels of different strides add up fairly) and summed
over levels. It is the element-wise form of Grad-CAM (HiResCAM: it attributes to the
positions that were actually used, not to a channel average) taken against a reference, the same
image made blank (every pixel its median colour): the first-order estimate of how much each
position's difference from a blank surface raised the target. A blank image therefore gets an
all-zero map, and a uniform background contributes nothing. :func:`sampling_map` splats the queries'
attention weights at their sampling locations and blurs them slightly.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur


@dataclass
class TracedForward:
    """What one traced forward pass recorded.

    Attributes:
        outputs: the model's outputs (``logits`` ``[1, Q, C]`` after LQE, ``pred_boxes``).
        sources: per decoder input level, the ``[1, d, h, w]`` map the decoder read (in the graph).
        references: the same maps for the blank reference image (detached), or empty.
        pixels: the ``[1, 3, h, w]`` input, a leaf that requires grad; reference_pixels: the reference's.
        query_features: ``[Q, H]`` input of the evaluation layer's class head (in the graph).
        sampling: per decoder layer up to the evaluation layer, ``(locations [Q, heads, P, 2]``
            normalised ``x, y``, ``weights [Q, heads, P])``, detached.
        layer: the evaluation decoder layer.
    """

    outputs: Any
    sources: list[torch.Tensor]
    query_features: torch.Tensor
    sampling: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    layer: int = -1
    references: list[torch.Tensor] = field(default_factory=list)
    pixels: torch.Tensor | None = None
    reference_pixels: torch.Tensor | None = None


def evaluation_layer(model: Any) -> int:
    decoder = model.model.decoder
    return int(getattr(decoder, "eval_idx", len(decoder.class_embed) - 1)) % len(decoder.class_embed)


def blank_like(pixel_values: torch.Tensor) -> torch.Tensor:
    """The reference: ``pixel_values [1, 3, h, w]`` with every pixel set to the image's median colour."""
    median = pixel_values.flatten(2).median(dim=2).values  # [1, 3]
    return median[:, :, None, None].expand_as(pixel_values).contiguous()


@torch.no_grad()
def decoder_memory(model: Any, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The decoder's input maps (``decoder_input_proj`` outputs) for ``pixel_values``."""
    maps: list[torch.Tensor] = []
    with ExitStack() as stack:
        for proj in model.model.decoder_input_proj:
            stack.callback(proj.register_forward_hook(lambda _m, _i, output: maps.append(output.detach())).remove)
        model(pixel_values=pixel_values)
    return maps


def traced_forward(model: Any, pixel_values: torch.Tensor, reference: torch.Tensor | None = None) -> TracedForward:
    """Run ``model`` on ``pixel_values [1, 3, h, w]`` with gradients to the decoder's memory.

    ``reference``: pixel values of the reference image (e.g. :func:`blank_like`); its decoder
    memory is what :func:`gradient_map` measures differences from (none: from zero).
    """
    if pixel_values.shape[0] != 1:
        raise ValueError(f"attribution traces one image at a time, got a batch of {pixel_values.shape[0]}")
    layer = evaluation_layer(model)
    sources: list[torch.Tensor] = []
    features: list[torch.Tensor] = []
    sampling: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(_module, _inputs, output):
        sources.append(output)

    def recording_core(core):
        def run(value, shapes, locations, weights, *args, **kwargs):
            sampling.append((locations[0].detach(), weights[0].detach()))
            return core(value, shapes, locations, weights, *args, **kwargs)

        return run

    decoder = model.model.decoder
    with ExitStack() as stack, torch.enable_grad():
        for proj in model.model.decoder_input_proj:
            stack.callback(proj.register_forward_hook(record).remove)
        head = decoder.class_embed[layer]
        stack.callback(head.register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0])).remove)
        for decoder_layer in decoder.layers[: layer + 1]:
            attention = decoder_layer.encoder_attn
            original = attention.ms_deformable_attn_core
            attention.ms_deformable_attn_core = recording_core(original)
            stack.callback(setattr, attention, "ms_deformable_attn_core", original)
        pixels = pixel_values.detach().clone().requires_grad_(True)
        outputs = model(pixel_values=pixels)
    if not features:
        raise RuntimeError(f"the class head of decoder layer {layer} was not called; cannot read query features")
    references = decoder_memory(model, reference) if reference is not None else []
    return TracedForward(outputs, sources, features[-1][0], sampling, layer, references, pixels, reference)


def gradient_maps(
    trace: TracedForward, target: torch.Tensor, size: tuple[int, int], *, signed: bool = False, sigma: float = 1.0
) -> dict[str, torch.Tensor]:
    """``[H, W]`` attributions of the scalar ``target``, at ``size``, from one backward pass.

    ``gradcam``: to the decoder's memory (per level gradient x (feature - reference feature),
    summed over channels and levels); ``pixel``: to the input pixels (gradient x (pixel -
    reference pixel), summed over colours and blurred by ``sigma`` input pixels). Positive where
    the difference from the reference raised ``target``; ``signed=False`` keeps only that part
    (ReLU, as Grad-CAM), ``signed=True`` keeps both signs (e.g. crack minus scratch).
    """
    if not target.requires_grad:
        return {"gradcam": torch.zeros(size), "pixel": torch.zeros(size)}
    inputs = [*trace.sources, trace.pixels]
    *grads, pixel_grad = torch.autograd.grad(target, inputs, retain_graph=True, allow_unused=True)
    total = torch.zeros(1, 1, *size)
    references = trace.references or [None] * len(trace.sources)
    for activation, reference, grad in zip(trace.sources, references, grads, strict=True):
        if grad is None:
            continue
        delta = activation.detach() if reference is None else activation.detach() - reference
        contribution = (grad * delta).sum(1, keepdim=True).float().cpu()
        # a density: a cell's attribution spread over the image pixels it covers, so the map sums to
        # the total attribution and a coarse level's large cells do not outweigh the fine ones
        pixels_per_cell = (size[0] * size[1]) / (contribution.shape[-2] * contribution.shape[-1])
        total += F.interpolate(contribution, size=size, mode="bilinear", align_corners=False) / pixels_per_cell
    memory = total[0, 0]
    if pixel_grad is None:
        pixel = torch.zeros(size)
    else:
        base = trace.pixels.detach()
        delta = base if trace.reference_pixels is None else base - trace.reference_pixels
        per_pixel = (pixel_grad * delta).sum(1, keepdim=True).float().cpu()
        kernel = 2 * int(3 * sigma) + 1
        per_pixel = gaussian_blur(per_pixel, [kernel, kernel], [sigma, sigma])
        pixel = F.interpolate(per_pixel, size=size, mode="bilinear", align_corners=False)[0, 0]
    if not signed:
        memory, pixel = memory.clamp(min=0), pixel.clamp(min=0)
    return {"gradcam": memory, "pixel": pixel}


def sampling_map(
    trace: TracedForward,
    queries: Sequence[int],
    size: tuple[int, int],
    query_weights: Sequence[float] | None = None,
    grid: tuple[int, int] = (128, 128),
    sigma: float = 1.5,
) -> torch.Tensor:
    """``[H, W]``: the attention weight the ``queries`` put at each place, over all decoder layers used.

    Each sampling point adds its attention weight (times its query's weight) to a ``grid`` cell;
    the grid is blurred by ``sigma`` cells and upsampled to ``size``. Points outside the image add
    nothing.
    """
    gh, gw = grid
    canvas = torch.zeros(gh * gw)
    if not queries or not trace.sampling:
        return torch.zeros(size)
    index = torch.as_tensor(list(queries), dtype=torch.long)
    scale = torch.ones(len(index)) if query_weights is None else torch.as_tensor(list(query_weights)).float()
    for locations, weights in trace.sampling:
        loc = locations[index].float().cpu()  # [n, heads, P, 2]
        w = weights[index].float().cpu() * scale[:, None, None]
        x, y = (loc[..., 0] * gw).floor().long(), (loc[..., 1] * gh).floor().long()
        inside = (x >= 0) & (x < gw) & (y >= 0) & (y < gh)
        canvas.index_add_(0, (y[inside] * gw + x[inside]), w[inside])
    canvas = canvas.reshape(1, 1, gh, gw) / len(trace.sampling)
    kernel = 2 * int(3 * sigma) + 1
    blurred = gaussian_blur(canvas, [kernel, kernel], [sigma, sigma])
    return F.interpolate(blurred, size=size, mode="bilinear", align_corners=False)[0, 0]


@dataclass(frozen=True)
class LogitParts:
    """The evaluation layer's class logits split into their terms, all ``[Q, C]``.

    ``logit = base + text + quality``: the detector's own linear head, the gated text term
    ``g * (exp(s) * cos + beta)``, and the LQE's per-query quality term (the same for every class).
    """

    base: torch.Tensor
    text: torch.Tensor
    quality: torch.Tensor
    logit: torch.Tensor
    gate: float


def logit_parts(model: Any, trace: TracedForward) -> LogitParts:
    """Split the traced logits (in the graph: a part can be a :func:`gradient_map` target)."""
    head = model.model.decoder.class_embed[trace.layer]
    h = trace.query_features
    base = F.linear(h, head.weight, head.bias)
    fusion = getattr(head, "fusion", None)
    text = fusion.gate * fusion.text_logits(h) if fusion is not None else torch.zeros_like(base)
    logit = trace.outputs.logits[0]
    gate = float(fusion.gate.detach()) if fusion is not None else 0.0
    return LogitParts(base, text, logit - base - text, logit, gate)
