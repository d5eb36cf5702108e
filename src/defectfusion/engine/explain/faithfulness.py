"""Do a map's top pixels carry a detection's class score? Deletion and insertion curves (RISE).

A pointing game mostly restates where a detection's box is. A map is *faithful* when the pixels it
ranks highest are the ones the detection's class score depends on (Petsiuk et al., RISE, BMVC
2018). For one image, one detection and one map ``[H, W]`` (higher = more important):

- **Order.** The pixels by the map, highest first; ties (e.g. a ReLU-clamped map's zeros) in one
  permutation per image drawn from ``seed``, shared by its detections and kinds (a constant map's
  order *is* the ``random`` reference's: common random numbers).
- **Blank.** Every pixel the image's median colour (:func:`~.attribution.blank_like`, the gradient
  maps' reference), in uint8 image space at the image's own size, where the masking is done; masked
  images reach the model as ``explain_image``'s input does (:func:`~..models.inference.prepare_images`).
- **Schedule.** Fractions of the pixels ``f_k = (k / steps) ** 2``, ``k = 0..steps``: dense at the
  start, where a small defect's pixels go. The default 8 steps: 0, 1.6, 6.3, 14, 25, 39, 56, 77,
  100 % (``steps=10``: 0, 1, 4, 9, ..., 81, 100 %). At ``f_k`` the first ``round(f_k * H * W)``
  pixels of the order are replaced.
- **Deletion**: the score with them replaced by the blank; **insertion**: the blank with them put
  back. ``deletion[0] = insertion[-1]``: the unmasked image's score; ``deletion[-1] = insertion[0]``: the blank's.
- **AUC**: the trapezoid in the pixel fraction over ``[0, 1]`` (the mean score); ``*_normalised``:
  over the unmasked score (None when 0). Faithful: low deletion AUC, high insertion AUC.
- **A detection's score in a masked image** (:func:`detection_scorer`): the max sigmoid score of its
  class over the queries whose box (mapped to the image as in ``explain_image``, clipped) has IoU >=
  0.5 with its box, 0 when none; unmasked, its own query matches (IoU 1): at least its own score.

Two reference orders are always added per detection: ``boxes`` (the detection's own box as a
Gaussian blob, :func:`box_blob_map`, weighted by its unmasked score: where the detection is, no
gradient, no attention; beyond the blob's float64 range ties fall back to the permutation) and
``random`` (the seeded permutation alone). Identical orders are scored once (``random`` once per
image). :func:`summarize_faithfulness` compares each kind with both, paired per detection, with
intervals that resample images.

Cost, nearly all forward passes: per image 3 detections x (5 kinds + ``boxes``) + one ``random`` = 19
orders x 2 curves x (steps - 1) + 2 = 268 forwards at 8 steps. Measured on one thread of the shared 2-core
CPU, ``dinov3_demo`` (256 px, random weights, batches of 8): a bare forward 22-26 ms an image, 25-32 ms
inside the curves; one image 6.7-8.7 s (10 steps: 8.5-9.4 s): 40 images 4.5-6 minutes (10 steps: 5.7-6.3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from ...data.transforms import content_size
from ...models.inference import InputSpec, prepare_images
from ...models.postprocess import clip_to_image, query_boxes_in_pixels
from ..evaluation.bootstrap import count_weights, image_draws
from .attribution import blank_like

REFERENCES = ("boxes", "random")
DEFAULT_STEPS = 8
MATCH_IOU = 0.5
CURVE_KEYS = ("fractions", "deletion", "insertion")
AUC_KEYS = ("deletion_auc", "insertion_auc", "deletion_auc_normalised", "insertion_auc_normalised")
# A kind's reading, the first that applies (:func:`summarize_faithfulness` says it in full).
READING_RULE = (
    "better/worse on a curve: the 95% interval of the paired difference excludes 0 on the faithful side (deletion "
    "lower, insertion higher) / the other; undetermined: no interval; random-like: better than random on neither "
    "curve; vs boxes: beyond-boxes (better on one, worse on neither), below-boxes (worse on one, better on "
    "neither), mixed (better on one, worse on the other), box-like (neither)"
)
READINGS: dict[str, str] = {
    "beyond-boxes": "faithful beyond the detections: its top pixels carry the score more than the box's do",
    "box-like": "no more faithful than the box: the score falls and returns as with the detection's box alone",
    "below-boxes": "less faithful than the detection's box",
    "mixed": "better than the box on one curve, worse on the other",
    "random-like": "no better than a random pixel order on either curve",
    "undetermined": "too few images for an interval",
    "reference": "a control order",
}

Scorer = Callable[[torch.Tensor], torch.Tensor]
"""uint8 images ``[B, 3, H, W]`` -> ``[B, n]``: each of the image's ``n`` detections' score in each image."""


@dataclass(frozen=True)
class DeletionCurves:
    """One detection's curves for one order.

    Attributes:
        fractions: ``[K]`` pixel fractions, 0 to 1.
        deletion: ``[K]`` the score with that fraction of the top pixels blanked.
        insertion: ``[K]`` the score of the blank with that fraction of the top pixels restored.
        deletion_auc, insertion_auc: trapezoid areas over the fractions (mean scores).
        deletion_auc_normalised, insertion_auc_normalised: the same over the unmasked score (None if 0).
    """

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: float
    insertion_auc: float
    deletion_auc_normalised: float | None
    insertion_auc_normalised: float | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: [round(float(v), 6) for v in getattr(self, k)] for k in CURVE_KEYS}
        return out | {k: getattr(self, k) for k in AUC_KEYS}


@dataclass
class DetectionFaithfulness:
    """One detection: its box (xyxy image pixels), class, unmasked score and curves per kind (the references too)."""

    box: list[float]
    label: int
    score: float
    curves: dict[str, DeletionCurves] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        curves = {kind: c.to_dict() for kind, c in self.curves.items()}
        return {"box": self.box, "label": self.label, "score": self.score, "curves": curves}


def fraction_schedule(steps: int = DEFAULT_STEPS) -> torch.Tensor:
    """``[steps + 1]`` float64 pixel fractions ``(k / steps) ** 2``: 0, then dense at the start, then 1."""
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive number of steps, got {steps}")
    return (torch.arange(int(steps) + 1, dtype=torch.float64) / int(steps)) ** 2


def blank_image(image_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3, H, W]``: every pixel the image's median colour (:func:`~.attribution.blank_like`)."""
    return blank_like(image_u8[None].float())[0].round().to(torch.uint8)


def box_blob_map(
    boxes: torch.Tensor, weights: torch.Tensor | Sequence[float], size: Sequence[int], dtype=torch.float32
) -> torch.Tensor:
    """``[H, W]``: boxes as score-weighted Gaussian blobs, a detections-only control map.

    Each ``x1, y1, x2, y2`` box (``[N, 4]`` pixels) adds ``weight * exp(-((x - cx)^2 / (2 sx^2) +
    (y - cy)^2 / (2 sy^2)))`` at pixel centres ``(x + 0.5, y + 0.5)``: centred at the box centre,
    ``sx, sy`` a quarter of its width and height (at least half a pixel), peak = its weight.
    No box: all zeros. Computed in float64, returned as ``dtype``.
    """
    height, width = int(size[0]), int(size[1])
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).cpu()
    weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1).cpu()
    if len(weights) != len(boxes):
        raise ValueError(f"box_blob_map: {len(boxes)} boxes but {len(weights)} weights")
    centre, sd = (boxes[:, :2] + boxes[:, 2:]) / 2, ((boxes[:, 2:] - boxes[:, :2]) / 4).clamp(min=0.5)
    xs, ys = (torch.arange(n, dtype=torch.float64) + 0.5 for n in (width, height))
    gx = torch.exp(-0.5 * ((xs[None] - centre[:, :1]) / sd[:, :1]) ** 2)  # [N, W]
    gy = torch.exp(-0.5 * ((ys[None] - centre[:, 1:]) / sd[:, 1:]) ** 2)  # [N, H]
    return torch.einsum("n,nh,nw->hw", weights, gy, gx).to(dtype)


def pixel_order(values: torch.Tensor, tie_break: torch.Tensor) -> torch.Tensor:
    """``[H * W]`` flat pixel indexes, highest ``values`` first, ties in the order of ``tie_break``."""
    flat = values.detach().reshape(-1).cpu().double()
    if not torch.isfinite(flat).all():
        raise ValueError("a map to order pixels by has NaN or infinite values")
    ranked = torch.sort(flat[tie_break], descending=True, stable=True).indices
    return tie_break[ranked]


def _curves(fractions: torch.Tensor, ends: torch.Tensor, inner: torch.Tensor) -> DeletionCurves:
    """``ends [2]``: the unmasked and the blank image's score; ``inner [2, K - 2]``: deletion, insertion."""
    full, empty = ends[:1], ends[1:]
    deletion, insertion = torch.cat([full, inner[0], empty]), torch.cat([empty, inner[1], full])
    full = float(ends[0])
    d, i = (float(torch.trapezoid(curve.double(), fractions)) for curve in (deletion, insertion))
    norm = (lambda a: a / full) if full > 0 else (lambda a: None)
    return DeletionCurves(fractions.float(), deletion.float(), insertion.float(), d, i, norm(d), norm(i))


def _batched(scorer: Scorer, images: Iterable[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Score a stream of uint8 ``[3, H, W]`` images in batches: ``[len, n]``."""
    images, out = iter(images), []
    while batch := list(islice(images, batch_size)):
        out.append(scorer(torch.stack(batch)).detach().float().cpu())
    return torch.cat(out)


def score_curves(
    scorer: Scorer,
    image_u8: torch.Tensor,
    boxes: torch.Tensor | Sequence[Sequence[float]],
    orders: Sequence[Mapping[str, torch.Tensor]],
    *,
    labels: Sequence[int] | None = None,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 8,
    seed: int = 0,
) -> list[DetectionFaithfulness]:
    """Deletion and insertion curves of each detection for each of its maps and the two references.

    ``scorer``: masked images -> every detection's score (:func:`detection_scorer` for a detector);
    ``image_u8``: uint8 ``[3, H, W]``; ``boxes``: ``[n, 4]`` the detections' xyxy image pixels (the
    ``boxes`` reference); ``orders``: per detection ``{kind: [H, W] map}`` (a map named like a reference
    is ignored); ``labels``: recorded in the result (default -1); ``steps``: :func:`fraction_schedule`;
    ``batch_size``: images per scorer call; ``seed``: of the tie-breaking (= ``random``) permutation.
    """
    image_u8, boxes = torch.as_tensor(image_u8), torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    if image_u8.dtype != torch.uint8 or image_u8.dim() != 3 or image_u8.shape[0] != 3:
        raise ValueError(f"image must be uint8 [3, H, W], got {image_u8.dtype} {list(image_u8.shape)}")
    if len(orders) != len(boxes):
        raise ValueError(f"{len(boxes)} detections but maps for {len(orders)}")
    labels = [-1] * len(boxes) if labels is None else [int(v) for v in labels]
    size = (int(image_u8.shape[1]), int(image_u8.shape[2]))
    for j, kind, shape in [(j, k, tuple(v.shape)) for j, maps in enumerate(orders) for k, v in maps.items()]:
        if shape != size:
            raise ValueError(f"detection {j}'s {kind!r} map is {list(shape)}, the image {list(size)}")
    if not len(boxes):
        return []
    fractions = fraction_schedule(steps)
    pixels = size[0] * size[1]
    counts = [round(float(f) * pixels) for f in fractions[1:-1]]
    blank = blank_image(image_u8)
    ends = _batched(scorer, [image_u8, blank], batch_size)  # [2, n]: unmasked, blank
    tie_break = torch.randperm(pixels, generator=torch.Generator().manual_seed(seed))

    unique: list[torch.Tensor] = [tie_break]  # index 0: the random order
    where: list[dict[str, int]] = []
    for j, maps in enumerate(orders):
        blob = box_blob_map(boxes[j], [max(float(ends[0, j]), 1e-6)], size, torch.float64)
        kinds = {k: v for k, v in maps.items() if k not in REFERENCES} | {"boxes": blob}
        where.append({"random": 0})
        for kind, values in kinds.items():
            order = pixel_order(values, tie_break)
            u = next((i for i, seen in enumerate(unique) if torch.equal(seen, order)), len(unique))
            if u == len(unique):
                unique.append(order)
            where[-1][kind] = u

    flat, flat_blank = image_u8.reshape(3, -1), blank.reshape(3, -1)

    def masked():
        for order in unique:
            for start, fill in ((flat, flat_blank), (flat_blank, flat)):  # deletion, then insertion
                for count in counts:
                    out = start.clone()
                    out[:, order[:count]] = fill[:, order[:count]]
                    yield out.reshape(3, *size)

    inner = _batched(scorer, masked(), batch_size) if counts else torch.zeros(0)  # steps=1: no inner fraction
    inner = inner.reshape(len(unique), 2, len(counts), len(boxes))
    results = []
    for j, kinds in enumerate(where):
        curves = {kind: _curves(fractions, ends[:, j], inner[u, :, :, j]) for kind, u in kinds.items()}
        results.append(DetectionFaithfulness(boxes[j].tolist(), labels[j], float(ends[0, j]), curves))
    return results


def detection_scorer(
    model: Any, size: Sequence[int], boxes: torch.Tensor, labels: Sequence[int], *, iou: float = MATCH_IOU
) -> Scorer:
    """A detector's :data:`Scorer` for detections ``boxes [n, 4]`` (xyxy image pixels) of ``labels [n]``.

    Images go through :func:`~defectfusion.models.inference.prepare_images` with the model's
    ``meta`` (size, normalisation, resize); every query's box is mapped to the image as
    ``explain_image`` maps it (the canvas whose top-left ``size`` is the image; clipped). A
    detection's score is the max sigmoid score of its class over queries with box IoU >= ``iou``
    with its box, 0 when none (always for a box of zero area, e.g. one clipped to the image's edge).
    """
    meta, (height, width) = model.meta, (int(size[0]), int(size[1]))
    content_h, content_w = content_size((height, width), meta.image_size, meta.resize)
    canvas = torch.tensor([[meta.image_size[0] * height / content_h, meta.image_size[1] * width / content_w]])
    targets = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    label_index = torch.as_tensor(list(labels), dtype=torch.long)
    device = next(model.parameters()).device

    @torch.inference_mode()
    def score(images: torch.Tensor) -> torch.Tensor:
        pixel_values, _ = prepare_images(list(images), InputSpec.of(meta))
        outputs = model(pixel_values=pixel_values.to(device))
        logits, pred = outputs.logits.float().cpu(), outputs.pred_boxes.float().cpu()
        batch, queries = logits.shape[:2]
        every = torch.arange(queries).expand(batch, queries)
        xyxy = clip_to_image(query_boxes_in_pixels(pred, every, canvas.expand(batch, 2)), (height, width))
        overlap = torch.stack([box_iou(b, targets) for b in xyxy])  # [B, Q, n]
        class_scores = torch.sigmoid(logits[:, :, label_index])  # [B, Q, n]
        return torch.where(overlap >= iou, class_scores, torch.zeros_like(class_scores)).amax(dim=1)

    return score


def deletion_insertion(
    model: Any,
    image_u8: torch.Tensor,
    detections: Sequence[tuple[Sequence[float], int]],
    orders: Sequence[Mapping[str, torch.Tensor]],
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 8,
    seed: int = 0,
    iou: float = MATCH_IOU,
) -> list[DetectionFaithfulness]:
    """:func:`score_curves` for a detector: ``detections`` are ``(box xyxy, label)`` in image pixels
    (e.g. an explanation's :class:`~defectfusion.structures.DetectionMatch` ``box`` and ``label``);
    ``orders`` their maps (e.g. ``DetectionMatch.maps``). The model is put in eval mode and runs on its device."""
    boxes = torch.tensor([[float(v) for v in box] for box, _ in detections], dtype=torch.float64).reshape(-1, 4)
    labels = [int(label) for _, label in detections]
    size = tuple(torch.as_tensor(image_u8).shape[-2:])
    scorer = detection_scorer(model.eval(), size, boxes, labels, iou=iou)
    return score_curves(scorer, image_u8, boxes, orders, labels=labels, steps=steps, batch_size=batch_size,
                        seed=seed)  # fmt: skip


# ---------------------------------------------------------------------------- the summary


@dataclass
class FaithfulnessSummary:
    """Per kind, over many detections of many images: mean AUCs and paired differences from the references.

    ``kinds[kind]``: ``detections``, ``deletion_auc``, ``insertion_auc`` (means, each with an
    ``*_interval``), ``deletion_auc_normalised``, ``insertion_auc_normalised`` (means; None if no
    score), ``versus`` (per reference: ``detections``, ``deletion``, ``insertion``: mean kind minus
    reference per detection, each with an ``*_interval``), ``reading`` (a :data:`READINGS` word),
    ``meaning``. Intervals: 95 % percentile, images resampled with their detections (None: < 2 images).
    """

    images: int
    detections: int
    draws: int
    fractions: list[float]
    kinds: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "detections": self.detections, "draws": self.draws,
                "fractions": self.fractions, "rule": READING_RULE, "kinds": self.kinds}  # fmt: skip


def _side(interval: list[float] | None, faithful_below: bool) -> int | None:
    """+1 better, -1 worse, 0 level, None without an interval."""
    if interval is None:
        return None
    low, high = interval if faithful_below else (-interval[1], -interval[0])
    return 1 if high < 0 else -1 if low > 0 else 0


def _reading(versus: dict[str, dict[str, Any]]) -> str:
    sides = {
        ref: (_side(v["deletion_interval"], True), _side(v["insertion_interval"], False)) for ref, v in versus.items()
    }
    if set(sides) != set(REFERENCES) or any(s is None for pair in sides.values() for s in pair):
        return "undetermined"
    if 1 not in sides["random"]:
        return "random-like"
    boxes = sides["boxes"]
    if 1 in boxes:
        return "mixed" if -1 in boxes else "beyond-boxes"
    return "below-boxes" if -1 in boxes else "box-like"


def _mean_and_interval(values: np.ndarray, image_of: np.ndarray, weights: np.ndarray | None) -> tuple:
    """The mean of per-detection ``values`` and, with draw weights ``[D, images]``, its 95% interval."""
    mean = float(values.mean())
    if weights is None:
        return mean, None
    sums = np.bincount(image_of, weights=values, minlength=weights.shape[1])
    counts = np.bincount(image_of, minlength=weights.shape[1]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        drawn = (weights @ sums) / (weights @ counts)
    drawn = drawn[np.isfinite(drawn)]
    return mean, [float(v) for v in np.percentile(drawn, [2.5, 97.5])] if len(drawn) else None


def summarize_faithfulness(
    per_image: Mapping[int, Sequence[DetectionFaithfulness]], draws: int = 1000, seed: int = 0
) -> FaithfulnessSummary:
    """Mean AUCs per kind and paired differences from ``boxes`` and ``random``, with image-resampled intervals.

    ``per_image``: image id -> its detections' results (:func:`deletion_insertion`), all on one
    schedule. A kind's statistics use the detections that have it (``pair``: the pair's classes only).
    The reading (:data:`READING_RULE`): per curve the kind is *better* than a reference when the 95 %
    interval of its paired difference excludes 0 on the faithful side (deletion lower, insertion
    higher), *worse* when it excludes 0 on the other, else level. In this order: ``undetermined`` (no
    interval: fewer than 2 images); ``random-like`` (better than ``random`` on neither curve); against
    ``boxes``: ``beyond-boxes`` (better on one curve, worse on neither: faithful beyond the detections),
    ``below-boxes`` (worse on one, better on neither), ``mixed`` (better on one, worse on the other),
    ``box-like`` (level on both: no more faithful than the box). The references read ``reference``.
    """
    ids = sorted(int(i) for i, dets in per_image.items() if len(dets))
    records = [(n, d) for n, i in enumerate(ids) for d in per_image[i]]
    fractions = [list(d.curves.values())[0].fractions for _, d in records if d.curves]
    if any(not torch.equal(f, fractions[0]) for f in fractions):
        raise ValueError("detections were scored on different schedules; summarise one schedule at a time")
    weights = None
    if len(ids) > 1 and draws > 0:
        weights = count_weights(image_draws(ids, draws, seed), ids).astype(np.float64)
    kinds: dict[str, dict[str, Any]] = {}
    names = list(dict.fromkeys(k for _, d in records for k in d.curves))
    for kind in [k for k in names if k not in REFERENCES] + [k for k in REFERENCES if k in names]:
        have = [(n, d) for n, d in records if kind in d.curves]
        image_of = np.array([n for n, _ in have], dtype=np.int64)
        entry: dict[str, Any] = {"detections": len(have)}
        for curve in ("deletion", "insertion"):
            auc = np.array([getattr(d.curves[kind], f"{curve}_auc") for _, d in have])
            entry[f"{curve}_auc"], entry[f"{curve}_auc_interval"] = _mean_and_interval(auc, image_of, weights)
            ratios = [r for _, d in have if (r := getattr(d.curves[kind], f"{curve}_auc_normalised")) is not None]
            entry[f"{curve}_auc_normalised"] = float(np.mean(ratios)) if ratios else None
        versus: dict[str, dict[str, Any]] = {}
        for ref in REFERENCES:
            if ref == kind or not all(ref in d.curves for _, d in have):
                continue
            diff = {"detections": len(have)}
            for curve in ("deletion", "insertion"):
                delta = np.array([getattr(d.curves[kind], f"{curve}_auc") - getattr(d.curves[ref], f"{curve}_auc")
                                  for _, d in have])  # fmt: skip
                diff[curve], diff[f"{curve}_interval"] = _mean_and_interval(delta, image_of, weights)
            versus[ref] = diff
        entry["versus"] = versus
        entry["reading"] = "reference" if kind in REFERENCES else _reading(versus)
        entry["meaning"] = READINGS[entry["reading"]]
        kinds[kind] = entry
    schedule = [round(float(v), 6) for v in fractions[0]] if fractions else []
    return FaithfulnessSummary(len(ids), len(records), draws if weights is not None else 0, schedule, kinds)
