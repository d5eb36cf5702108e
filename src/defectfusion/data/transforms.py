"""Augmentation presets, mosaic, the stop-epoch policy and the batch collator.

Everything works on ``(image, target)`` pairs as produced by
:class:`~defectfusion.data.coco.CocoDetection`: a ``tv_tensors.Image`` uint8 ``[3, H, W]`` and
a dict with ``boxes`` (``tv_tensors.BoundingBoxes`` XYXY pixels), ``labels``, ``image_id`` and
``orig_size``. All geometry goes through ``torchvision.transforms.v2`` so boxes follow the
pixels.

Training pipeline (DEIMv2's recipe)::

    [mosaic, p=0.5]            dataset level: the sample + 3 random others on one canvas
    photometric distortion     every sample
    zoom-out, IoU crop         only samples that did not get a mosaic (DEIM keeps them apart)
    sanitize
    horizontal flip
    resize to image_size (H, W)
    sanitize                   drop boxes smaller than 1 px

Epoch policy: the "heavy" steps (mosaic, photometric, zoom-out, IoU crop) run for
``start_epoch <= epoch < stop_epoch``; mosaic additionally stops at ``mosaic_stop_epoch``.
Outside that window only flip + resize (+ sanitize) remain, so the last epochs see the clean
data distribution. Call ``dataset.set_epoch(epoch)`` at the start of every epoch (before the
DataLoader starts its workers; not compatible with ``persistent_workers=True``).

Normalisation is left to :class:`DetectionCollator`, which also converts boxes to the
normalised ``cx, cy, w, h`` that transformers' DEIMv2 loss expects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..config import TrainAugmentConfig
from .coco import CocoDetection, CocoIndex

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DetectionCollator",
    "MosaicDataset",
    "TrainAugmentConfig",
    "TrainTransform",
    "build_eval_transform",
    "build_train_dataset",
    "build_train_transform",
    "mosaic4",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv3 variants
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = tuple[tv_tensors.Image, dict[str, Any]]
ImageSize = int | Sequence[int]


def _hw(image_size: ImageSize) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(v) for v in image_size)
    return h, w


class _RandomIoUCrop(torch.nn.Module):
    """``v2.RandomIoUCrop`` with a probability; images without boxes are left alone.

    (torchvision's crop needs a box to measure IoU against; without one it only spins.)
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.crop = v2.RandomIoUCrop()

    def forward(self, image: tv_tensors.Image, target: dict[str, Any]) -> Sample:
        if torch.rand(()) >= self.p or target["boxes"].shape[0] == 0:
            return image, target
        return self.crop(image, target)


class TrainTransform:
    """The per-sample training pipeline with the epoch policy (see the module docstring).

    Call as ``transform(image, target, mosaic=False)``; ``mosaic=True`` says the sample is
    already a mosaic, so zoom-out and IoU crop are skipped. :meth:`set_epoch` switches the heavy
    steps off outside ``[start_epoch, stop_epoch)``.
    """

    def __init__(self, cfg: TrainAugmentConfig, image_size: ImageSize, resize_mode: str = "plain") -> None:
        self.cfg = cfg
        self.image_size = _hw(image_size)
        self.epoch = 0
        flip = [v2.RandomHorizontalFlip(cfg.flip_prob)] if cfg.flip_prob > 0 else []
        resize = [resize_transform(self.image_size, resize_mode)]
        sanitize = [v2.SanitizeBoundingBoxes(min_size=cfg.sanitize_min_size)] if cfg.sanitize else []
        photo = [v2.RandomPhotometricDistort(p=cfg.photometric_prob)] if cfg.photometric_prob > 0 else []
        zoom = (
            [v2.RandomZoomOut(fill=cfg.zoom_out_fill, side_range=cfg.zoom_out_side_range, p=cfg.zoom_out_prob)]
            if cfg.zoom_out_prob > 0
            else []
        )
        crop = [_RandomIoUCrop(cfg.iou_crop_prob)] if cfg.iou_crop_prob > 0 else []
        self.light = v2.Compose([*flip, *resize, *sanitize])
        # without any heavy step, the heavy window is the light pipeline (not an extra sanitize before resizing)
        heavy = [*photo, *zoom, *crop]
        self.heavy = v2.Compose([*heavy, *sanitize, *flip, *resize, *sanitize]) if heavy else self.light
        self.after_mosaic = v2.Compose([*photo, *flip, *resize, *sanitize])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def heavy_active(self) -> bool:
        return self.cfg.heavy_enabled(self.epoch)

    def __call__(self, image: tv_tensors.Image, target: dict[str, Any], mosaic: bool = False) -> Sample:
        if not self.heavy_active:
            return self.light(image, target)
        return (self.after_mosaic if mosaic else self.heavy)(image, target)


def build_train_transform(cfg: TrainAugmentConfig, image_size: ImageSize, resize: str = "plain") -> TrainTransform:
    """Per-sample training transform; ``image_size`` is an int or ``(H, W)``, ``resize`` plain or letterbox."""
    return TrainTransform(cfg, image_size, resize)


RESIZE_MODES = ("plain", "letterbox")


def content_size(orig_size: Sequence[int], image_size: ImageSize, resize: str = "plain") -> tuple[int, int]:
    """``(h, w)`` of the image content inside the model input: all of it for the plain resize; for
    ``letterbox`` the image scaled to fit with its aspect ratio kept (the rest is padding)."""
    out_h, out_w = _hw(image_size)
    if resize == "plain":
        return out_h, out_w
    if resize != "letterbox":
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    height, width = int(orig_size[0]), int(orig_size[1])
    scale = min(out_h / height, out_w / width)
    return max(1, min(out_h, round(height * scale))), max(1, min(out_w, round(width * scale)))


class Letterbox(v2.Transform):
    """Resize to fit ``image_size`` with the aspect ratio kept, then pad bottom and right with ``fill``.

    Padding at the bottom-right keeps the content's origin at (0, 0), so a box maps back to the
    original by one scale per axis (:func:`content_size`), exactly.
    """

    def __init__(self, image_size: ImageSize, fill: int = 0) -> None:
        super().__init__()
        self.image_size = _hw(image_size)
        self.fill = fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next(x for x in flat_inputs if isinstance(x, (tv_tensors.Image, torch.Tensor)))
        height, width = F.get_size(image)
        new_h, new_w = content_size((height, width), self.image_size, "letterbox")
        return {"size": [new_h, new_w], "padding": [0, 0, self.image_size[1] - new_w, self.image_size[0] - new_h]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.BoundingBoxes, tv_tensors.Mask, torch.Tensor)):
            return inpt
        resized = self._call_kernel(F.resize, inpt, params["size"], antialias=True)
        return self._call_kernel(F.pad, resized, params["padding"], fill=self.fill)


def resize_transform(image_size: ImageSize, resize: str = "plain") -> v2.Transform:
    """The step that brings an image to the model's input size: ``plain`` (stretch) or ``letterbox``."""
    if resize == "letterbox":
        return Letterbox(image_size)
    if resize != "plain":
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    return v2.Resize(_hw(image_size))


def build_eval_transform(image_size: ImageSize, resize: str = "plain") -> v2.Transform:
    """Resize to ``image_size`` (int or ``(H, W)``; ``resize``: plain or letterbox) and nothing else.

    The target keeps ``orig_size`` (H, W) so predictions can be mapped back to the original.
    """
    return resize_transform(image_size, resize)


# --------------------------------------------------------------------------- mosaic


def mosaic4(samples: Sequence[Sample], size: int, fill: int = 0) -> Sample:
    """Place four samples on a ``size x size`` canvas, one per quadrant, meeting at the centre.

    Each image is resized (aspect kept) to fit its ``size/2`` quadrant and pushed against
    the centre; its boxes are scaled and shifted with it. The target keeps ``image_id`` and
    ``orig_size`` of the first sample; ``boxes``/``labels`` are the concatenation of all four.

    Returns:
        ``(image [3, size, size] uint8, target)``.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic4 needs 4 samples, got {len(samples)}")
    half = size // 2
    canvas = torch.full((3, size, size), fill, dtype=torch.uint8, device=samples[0][0].device)
    boxes, labels = [], []
    for q, (image, target) in enumerate(samples):
        h, w = image.shape[-2:]
        scale = min(half / h, half / w)
        nh, nw = max(1, min(half, round(h * scale))), max(1, min(half, round(w * scale)))
        tile = F.resize(image, [nh, nw], antialias=True)
        tile_boxes = F.resize(target["boxes"], [nh, nw])
        x0 = half - nw if q in (0, 2) else half  # left column sits left of the centre
        y0 = half - nh if q in (0, 1) else half  # top row sits above it
        canvas[:, y0 : y0 + nh, x0 : x0 + nw] = tile
        offset = torch.tensor([x0, y0, x0, y0], dtype=torch.float32, device=canvas.device)
        boxes.append(tile_boxes.as_subclass(torch.Tensor).float() + offset)
        labels.append(target["labels"])
    merged = dict(samples[0][1])
    merged["boxes"] = tv_tensors.BoundingBoxes(torch.cat(boxes), format="XYXY", canvas_size=(size, size))
    merged["labels"] = torch.cat(labels)
    return tv_tensors.Image(canvas), merged


@contextmanager
def _sample_rng(seed: int | None, epoch: int, index: int) -> Iterator[None]:
    """Seed torch's CPU RNG from (seed, epoch, index) for one sample, then restore it.

    Makes an epoch's augmentation independent of worker count and order, so a resumed run
    sees the same samples as an uninterrupted one. ``seed=None`` uses the ambient RNG.
    """
    if seed is None:
        yield
        return
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(state) & ((1 << 63) - 1))
        yield


class MosaicDataset(torch.utils.data.Dataset):
    """Training view of a :class:`CocoDetection`: mosaic, the epoch policy, seeded sampling.

    For sample ``i`` it loads the raw sample, with probability ``cfg.mosaic_prob`` (while
    ``cfg.mosaic_enabled(epoch)``) adds 3 random other samples with :func:`mosaic4` and a
    random affine (rotation/translation/scale), then applies ``dataset.transform`` (a
    :class:`TrainTransform` is told whether the sample is a mosaic).

    Deterministic: with an integer ``seed`` every random choice of sample ``i`` in epoch ``e``
    (mosaic partners and all transforms) depends only on ``(seed, e, i)``.
    """

    def __init__(self, dataset: CocoDetection, cfg: TrainAugmentConfig, seed: int | None = 0) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.seed = seed
        self.epoch = 0
        translate = tuple(cfg.mosaic_translate)
        trivial = cfg.mosaic_rotation == 0 and translate == (0.0, 0.0) and tuple(cfg.mosaic_scale) == (1.0, 1.0)
        self.affine = (
            None
            if trivial
            else v2.RandomAffine(
                degrees=cfg.mosaic_rotation,
                translate=translate if any(translate) else None,
                scale=cfg.mosaic_scale,
                fill=cfg.mosaic_fill,
            )
        )

    @property
    def index(self) -> CocoIndex:
        return self.dataset.index

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset.class_names

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: updates the mosaic policy and the wrapped transform's.

        DataLoader workers hold copies of the dataset: call this before iterating, and use
        ``persistent_workers=False`` (the default), or the workers never see the new epoch.
        """
        self.epoch = int(epoch)
        self.dataset.set_epoch(self.epoch)

    def __getitem__(self, i: int) -> Sample:
        with _sample_rng(self.seed, self.epoch, i):
            image, target = self.dataset.load_sample(i)
            use_mosaic = self.cfg.mosaic_enabled(self.epoch) and bool(torch.rand(()) < self.cfg.mosaic_prob)
            if use_mosaic:
                others = torch.randint(len(self.dataset), (3,)).tolist()
                samples = [(image, target), *(self.dataset.load_sample(j) for j in others)]
                image, target = mosaic4(samples, self.cfg.mosaic_output_size, self.cfg.mosaic_fill)
                if self.affine is not None:
                    image, target = self.affine(image, target)
            transform = self.dataset.transform
            if isinstance(transform, TrainTransform):
                image, target = transform(image, target, mosaic=use_mosaic)
            elif transform is not None:
                image, target = transform(image, target)
        return image, target


def build_train_dataset(
    index: CocoIndex, cfg: TrainAugmentConfig, image_size: ImageSize, seed: int | None = 0, resize: str = "plain"
) -> MosaicDataset:
    """The training dataset: ``MosaicDataset(CocoDetection(index, build_train_transform(...)))``."""
    return MosaicDataset(CocoDetection(index, build_train_transform(cfg, image_size, resize)), cfg, seed=seed)


# --------------------------------------------------------------------------- collate


class DetectionCollator:
    """Batch ``(image, target)`` samples into the inputs of ``Deimv2ForObjectDetection``.

    Args:
        image_mean, image_std: per-channel statistics on the ``[0, 1]`` scale. ``(0, 0, 0)``
            and ``(1, 1, 1)`` (the default) only divide by 255, as the HGNetV2 variants expect;
            DINOv3 variants use :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.

    Returns (from ``__call__``) a dict:
        - ``pixel_values``: ``[B, 3, H, W]`` float32, ``(uint8 / 255 - mean) / std``.
        - ``labels``: ``B`` dicts with ``class_labels`` ``[N]`` int64 and ``boxes`` ``[N, 4]``
          float32 normalised ``cx, cy, w, h`` in ``[0, 1]``.
        - ``image_ids``: ``[B]`` int64 COCO image ids.
        - ``orig_sizes``: ``[B, 2]`` int64 ``(H, W)`` of the images before resizing.

    All images of a batch must have the same size (the transforms resize them).
    """

    def __init__(
        self, image_mean: Sequence[float] = (0.0, 0.0, 0.0), image_std: Sequence[float] = (1.0, 1.0, 1.0)
    ) -> None:
        if len(image_mean) != 3 or len(image_std) != 3 or any(s <= 0 for s in image_std):
            raise ValueError(f"image_mean/std need 3 values each, std > 0; got {image_mean}, {image_std}")
        self.image_mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
        self.image_std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, batch: Sequence[Sample]) -> dict[str, Any]:
        sizes = {tuple(image.shape[-2:]) for image, _ in batch}
        if len(sizes) != 1:
            raise ValueError(
                f"images in a batch must share one size, got {sorted(sizes)}; resize them in the transform"
            )
        pixels = torch.stack([image.as_subclass(torch.Tensor) for image, _ in batch]).float().div_(255.0)
        pixels = (pixels - self.image_mean.to(pixels.device)) / self.image_std.to(pixels.device)
        return {"pixel_values": pixels, **collate_targets([target for _, target in batch])}


class FeatureCollator:
    """Batch ``(feature maps, target)`` samples (a cached trunk's output in place of images).

    Returns :class:`DetectionCollator`'s dict with ``trunk_features`` (one ``[B, C, h, w]`` tensor per
    level) in place of ``pixel_values``; maps of None (unreadable files) leave them as ``trunk_maps`` with
    ``damaged`` (row -> the target's ``damage``), for :class:`~.feature_store.MendingLoader` to fill.
    """

    def __call__(self, batch: Sequence[tuple[Sequence[torch.Tensor] | None, dict[str, Any]]]) -> dict[str, Any]:
        maps, targets = [m for m, _ in batch], collate_targets([t for _, t in batch])
        damaged = {row: t["damage"] for row, (m, t) in enumerate(batch) if m is None}
        if damaged:
            return {"trunk_maps": maps, "damaged": damaged, **targets}
        return {"trunk_features": [torch.stack(level) for level in zip(*maps, strict=True)], **targets}


def collate_targets(targets: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``labels`` (normalised ``cx, cy, w, h`` boxes + class labels), ``image_ids`` and ``orig_sizes`` of a batch."""
    return {
        "labels": [
            {"class_labels": t["labels"].to(torch.int64), "boxes": _normalized_cxcywh(t["boxes"])} for t in targets
        ],
        "image_ids": torch.tensor([int(t["image_id"]) for t in targets], dtype=torch.int64),
        "orig_sizes": torch.stack([torch.as_tensor(t["orig_size"], dtype=torch.int64) for t in targets]),
    }


def resized_target(
    target: dict[str, Any], image_size: ImageSize, resize: str = "plain", sanitize_min_size: float | None = None
) -> dict[str, Any]:
    """``target`` as ``resize_transform`` (then ``SanitizeBoundingBoxes(sanitize_min_size)`` unless None) leaves
    it, computed from the boxes alone: what a pipeline without random steps does, without reading the image."""
    boxes = resize_transform(image_size, resize)(target["boxes"])
    labels = target["labels"]
    if sanitize_min_size is not None:
        boxes, valid = F.sanitize_bounding_boxes(boxes, min_size=sanitize_min_size)
        labels = labels[valid]
    return {**target, "boxes": boxes, "labels": labels}


def _normalized_cxcywh(boxes: tv_tensors.BoundingBoxes) -> torch.Tensor:
    """``[N, 4]`` float32 ``cx, cy, w, h`` divided by the canvas width/height."""
    h, w = boxes.canvas_size
    xyxy = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
    xyxy = xyxy.as_subclass(torch.Tensor).float().reshape(-1, 4)
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=xyxy.device)
    cxcywh = box_convert(xyxy, "xyxy", "cxcywh") / scale
    return cxcywh.clamp_(0.0, 1.0)
