"""Images in, detections in original-image pixels out: the one road every prediction path takes.

``prepare_images`` is the validation pipeline's preprocessing (``build_eval_transform`` and the
collator's normalisation) for a model's :class:`InputSpec`; :func:`detect` runs a batch through
the model, the post-processor and :func:`finish` (score threshold, boxes clipped to the image and
mapped back from a letterbox, optional class-wise NMS). ``model.predict`` (:class:`PredictsImages`),
training-time validation and ``engine.prediction.predictor.Predictor`` (whose backends, PyTorch
or ONNX, end where :func:`decode` does) all take it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.ops import batched_nms

from ..data.images import as_image
from ..data.transforms import build_eval_transform, content_size
from ..errors import DataError
from ..structures import Detections
from .postprocess import clip_to_image, postprocess


@dataclass(frozen=True)
class InputSpec:
    """What a detector takes: images brought to ``size`` ``(H, W)`` by ``resize`` (``plain``: stretched,
    ``letterbox``: aspect kept, padded) and normalised ``(x / 255 - mean) / std`` per channel."""

    size: tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "plain"

    @classmethod
    def of(cls, meta: Any) -> InputSpec:
        """The spec of anything with ``image_size``, ``image_mean``, ``image_std`` and ``resize`` (a model's meta)."""
        size = (int(meta.image_size[0]), int(meta.image_size[1]))
        mean = tuple(float(v) for v in meta.image_mean)
        std = tuple(float(v) for v in meta.image_std)
        return cls(size, mean, std, getattr(meta, "resize", "plain"))  # type: ignore[arg-type]

    def with_size(self, size: Sequence[int]) -> InputSpec:
        return InputSpec((int(size[0]), int(size[1])), self.mean, self.std, self.resize)


def normalize(
    uint8_batch: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float ``(x / 255 - mean) / std`` per channel, on the batch's device."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=uint8_batch.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=uint8_batch.device).view(1, 3, 1, 1)
    return (uint8_batch.float().div_(255.0) - mean) / std


def prepare_images(images: Sequence[torch.Tensor], spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """What the detector takes: uint8 ``[3, H, W]`` images -> (``pixel_values [B, 3, h, w]``, ``sizes [B, 2]`` (H, W)).

    Each image is brought to ``spec.size`` with the evaluation transform and normalised.
    """
    transform = build_eval_transform(spec.size, spec.resize)
    sizes = torch.tensor([[int(im.shape[-2]), int(im.shape[-1])] for im in images], dtype=torch.int64)
    resized = torch.stack([transform(im).as_subclass(torch.Tensor) for im in images])
    return normalize(resized, spec.mean, spec.std), sizes


def postprocess_sizes(orig_sizes: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """``[B, 2]`` sizes the post-processor scales normalised boxes to: the originals' for the plain
    resize (boxes land in original pixels), the model input's for letterbox (then :func:`to_original`).

    Integer sizes either way, so exported graphs (``orig_target_sizes`` int64) take them unchanged; on
    ``orig_sizes``' device.
    """
    if spec.resize == "plain":
        return orig_sizes
    model_size = torch.tensor(spec.size, dtype=torch.int64, device=orig_sizes.device)
    return model_size.expand(len(orig_sizes), 2).clone()


def to_original(detections: Detections, orig_size: torch.Tensor | Sequence[int], spec: InputSpec) -> Detections:
    """Boxes from what :func:`postprocess_sizes` gave the post-processor to original-image pixels."""
    if spec.resize == "plain":
        return detections
    height, width = (int(v) for v in orig_size)
    content_h, content_w = content_size((height, width), spec.size, spec.resize)
    scale = detections.boxes.new_tensor([width / content_w, height / content_h] * 2)
    return Detections(detections.boxes * scale, detections.scores, detections.labels)


def check_thresholds(threshold: float, nms_iou: float | None) -> None:
    """A score threshold in ``[0, 1]`` and an NMS IoU in ``(0, 1]`` (or None), else :class:`DataError`."""
    if not 0.0 <= threshold <= 1.0:
        raise DataError(f"score threshold must be in [0, 1], got {threshold}")
    if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
        raise DataError(f"NMS IoU threshold must be in (0, 1], got {nms_iou}")


def keep_detections(
    detections: Detections,
    size: torch.Tensor | Sequence[int],
    threshold: float,
    nms_iou: float | None = None,
    spec: InputSpec | None = None,
) -> Detections:
    """The detections of one image of ``size`` (H, W) with ``score >= threshold``, boxes clipped to
    the image, and, with ``nms_iou``, class-wise non-maximum suppression at that IoU.

    For a letterbox ``spec`` the boxes come as :func:`postprocess_sizes` scaled them (model input
    pixels) and are first mapped to the original (:func:`to_original`).
    """
    if spec is not None:
        detections = to_original(detections, size, spec)
    keep = detections.scores >= threshold
    boxes = clip_to_image(detections.boxes[keep].float(), size)
    scores, labels = detections.scores[keep].float(), detections.labels[keep].long()
    if nms_iou is not None and len(scores):
        # class-wise: a crack and a scratch on the same place both stay; duplicates of one go
        kept = batched_nms(boxes, scores, labels, nms_iou)
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
    return Detections(boxes, scores, labels)


def decode(outputs: Any, scaled_to: torch.Tensor, top_k: int = 300) -> list[Detections]:
    """A detector's outputs (``logits``, ``pred_boxes``) -> the top ``top_k`` (query, class) pairs per image,
    boxes scaled to ``scaled_to`` (:func:`postprocess_sizes`), on the CPU."""
    found = postprocess(outputs.logits.float(), outputs.pred_boxes.float(), scaled_to, top_k=top_k)
    return [d.to("cpu") for d in found]


def finish(
    found: Sequence[Detections],
    orig_sizes: torch.Tensor,
    spec: InputSpec,
    threshold: float,
    nms_iou: float | None = None,
) -> list[Detections]:
    """:func:`keep_detections` for each image of a batch whose boxes :func:`decode` (or a graph) scaled."""
    if len(found) != len(orig_sizes):
        raise RuntimeError(f"the detector returned {len(found)} results for {len(orig_sizes)} images")
    return [keep_detections(d, s, threshold, nms_iou, spec) for d, s in zip(found, orig_sizes, strict=True)]


def detect(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    orig_sizes: torch.Tensor,
    spec: InputSpec,
    threshold: float = 0.0,
    nms_iou: float | None = None,
    top_k: int = 300,
    forward_context: Any = None,
) -> list[Detections]:
    """One batch through the whole road: ``model(**inputs)`` (in ``forward_context``, e.g. autocast) ->
    :func:`decode` -> :func:`finish`. ``orig_sizes [B, 2]`` (H, W) of the original images."""
    with forward_context if forward_context is not None else contextlib.nullcontext():
        outputs = model(**inputs)
    device = outputs.logits.device
    found = decode(outputs, postprocess_sizes(orig_sizes, spec).to(device), top_k)
    return finish(found, orig_sizes, spec, threshold, nms_iou)


class PredictsImages:
    """``predict``: for a detector with ``meta`` (input size, normalisation) and ``class_names``."""

    @torch.inference_mode()
    def predict(
        self,
        images: Any,
        threshold: float = 0.5,
        *,
        nms_iou: float | None = None,
        top_k: int = 300,
        batch_size: int = 8,
    ) -> list[Detections]:
        """Detect defects in images; one :class:`~defectfusion.structures.Detections` per image.

        Args:
            images: one image or a list: file paths, PIL images, uint8 arrays ``[H, W, 3]`` or uint8
                tensors ``[3, H, W]`` (RGB), each at any size.
            threshold: keep detections with ``score >= threshold``.
            nms_iou: class-wise NMS at this IoU (None: off; keep it off for mAP evaluation).
            top_k: (query, class) pairs considered per image before the threshold.
            batch_size: images per forward pass.

        Returns:
            Per image, ``boxes [N, 4]`` xyxy in its own pixels (clipped to it), ``scores [N]`` best
            first, ``labels [N]`` class indexes (``self.class_names[label]``; the dataset's COCO
            category id is ``self.meta.category_ids[label]`` when the model remembers them).
        """
        check_thresholds(threshold, nms_iou)
        single = not isinstance(images, (list, tuple))
        pictures = [as_image(im) for im in ([images] if single else images)]
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        spec, out = InputSpec.of(self.meta), []
        try:
            for start in range(0, len(pictures), batch_size):
                pixels, sizes = prepare_images(pictures[start : start + batch_size], spec)
                out += detect(self, {"pixel_values": pixels.to(device)}, sizes, spec, threshold, nms_iou, top_k)
        finally:
            self.train(was_training)
        return out
