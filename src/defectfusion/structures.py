"""Typed records passed between the data, model, engine and report layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Detections:
    """Detections for one image, in pixels of the original image.

    Attributes:
        boxes: ``[N, 4]`` float32, ``x1, y1, x2, y2`` in pixels of the original image.
        scores: ``[N]`` float32 confidences in ``[0, 1]``, sorted descending.
        labels: ``[N]`` int64 contiguous class indices (``0 .. C-1``), not COCO category ids.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))

    @classmethod
    def empty(cls) -> Detections:
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))


@dataclass
class DetectionMatch:
    """One detection and the similarity of its query feature to every class text.

    Attributes:
        box: ``x1, y1, x2, y2`` in original-image pixels.
        label, class_name, score: the detection.
        query: index of the decoder query it came from.
        similarity: ``C`` cosine similarities (projected query feature vs class text), label order.
        logit_parts: the detected class's logit split as ``logit = base + text + quality``
            (the detector's own head, the gated text term, the LQE term) and the ``gate``.
        maps: per map kind, ``[H, W]`` float32 at the image's size: ``gradcam`` (what raised its
            logit), ``text_gradcam`` (what raised its text term), ``sampling`` (where its query
            looked) and, for a class of the confusable pair, ``pair`` (signed: what pushed it
            towards its class rather than the other).
        pair_margin: for a detection of a confusable-pair class, ``{"against", "margin",
            "text", "base"}``: its logit minus the other class's, and the text and base terms'
            parts of that margin (the LQE term is the same for both classes and cancels).
    """

    box: list[float]
    label: int
    class_name: str
    score: float
    query: int
    similarity: list[float]
    logit_parts: dict[str, float] = field(default_factory=dict)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    pair_margin: dict[str, Any] | None = None

    def top_matches(self, class_names: Sequence[str], k: int | None = None) -> list[tuple[str, float]]:
        order = np.argsort(-np.asarray(self.similarity), kind="stable")
        return [(class_names[i], float(self.similarity[i])) for i in order[: k or len(order)]]


@dataclass
class Explanation:
    """Similarity maps and detection matches of one image.

    Attributes:
        image: the image, uint8 ``[H, W, 3]``.
        class_names: ``C`` names.
        maps: ``[C, H, W]`` float32 cosine similarity per class at the image's size (mean of levels).
        level_maps: per feature level, ``[C, h, w]`` before upsampling.
        map_head: which fusion head projected the feature maps (module path).
        map_head_note: what that head is trained on.
        query_head: which fusion head scored the detections' query features.
        detections: the detections at or above ``threshold``, best first.
        threshold: the score threshold.
        source: image path, if read from a file.
        text: where the model's class texts came from (descriptions file, encoder).
        class_maps: per map kind, ``[C, H, W]`` float32 at the image's size, one map per class
            (``similarity`` is ``maps``; the attribution kinds use the class's detections, or its
            best-scoring query when none passes the threshold).
        map_kinds: per map kind, what it shows, in words.
        pair: the confusable pair the detections' margins are computed for, if any.
        default_kind: the map kind the figures lead with.
    """

    image: np.ndarray
    class_names: list[str]
    maps: torch.Tensor
    level_maps: list[torch.Tensor]
    map_head: str
    map_head_note: str
    query_head: str
    detections: list[DetectionMatch]
    threshold: float
    source: str | None = None
    text: dict[str, Any] = field(default_factory=dict)
    class_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    map_kinds: dict[str, str] = field(default_factory=dict)
    pair: tuple[str, str] | None = None
    default_kind: str = "sampling"

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def best_class_share(self) -> list[float]:
        """Per class, the fraction of pixels where its text matches best."""
        best = self.maps.argmax(0).flatten()
        counts = torch.bincount(best, minlength=self.maps.shape[0]).float()
        return (counts / max(1, best.numel())).tolist()

    def to_json(self) -> dict[str, Any]:
        names = self.class_names

        def r(x: float) -> float:
            return round(float(x), 5)

        return {
            "image": self.source,
            "image_size": {"height": self.size[0], "width": self.size[1]},
            "classes": names,
            "text": self.text,
            "similarity": "cosine between the fusion head's projection of a visual feature and a class text embedding",
            "maps": {
                "head": self.map_head,
                "head_note": self.map_head_note,
                "combined": "each level upsampled bilinearly to the image size, then the mean over levels",
                "per_class": {
                    n: {"min": r(self.maps[c].min()), "max": r(self.maps[c].max()), "mean": r(self.maps[c].mean())}
                    for c, n in enumerate(names)
                },
                "best_class_share": {  # fraction of pixels where each class's text matches best
                    n: r(v) for n, v in zip(names, self.best_class_share(), strict=True)
                },
                "levels": [
                    {
                        "height": int(m.shape[1]),
                        "width": int(m.shape[2]),
                        "similarity": {n: [[r(v) for v in row] for row in m[c].tolist()] for c, n in enumerate(names)},
                    }
                    for m in self.level_maps
                ],
            },
            "map_kinds": self.map_kinds,
            "pair": list(self.pair) if self.pair else None,
            "detections": {
                "head": self.query_head,
                "logit": "logit = base (the detector's own head) + text (gate x text logit) + quality (LQE)",
                "threshold": self.threshold,
                "items": [
                    {
                        "box_xyxy": [round(v, 2) for v in d.box],
                        "label": d.label,
                        "class": d.class_name,
                        "score": r(d.score),
                        "query": d.query,
                        "similarity": {n: r(v) for n, v in zip(names, d.similarity, strict=True)},
                        "top_matches": [[n, r(v)] for n, v in d.top_matches(names, 3)],
                        "logit_parts": {k: r(v) for k, v in d.logit_parts.items()},
                        "pair_margin": d.pair_margin,
                    }
                    for d in self.detections
                ],
            },
        }


_CLASS_FIELDS = ("ap50", "ap", "precision", "recall", "f1", "conf")
_COUNTS = ("num_images", "num_ground_truth", "num_detections")
_KNOWN = ("map50", "map", *_COUNTS, "per_class", "confusion_matrix", "pr_curves")


@dataclass(frozen=True)
class ClassMetrics:
    """One class's numbers in :class:`Metrics` (``None``: undefined, e.g. the class has no GT).

    Attributes:
        ap50, ap: COCO AP@0.5 and AP@0.5:0.95.
        precision, recall, f1: at the confidence ``conf`` where F1 is maximal.
        num_gt, num_pred: non-crowd ground-truth boxes and predictions (all scores).
    """

    ap50: float | None = None
    ap: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    conf: float | None = None
    num_gt: int | None = None  # None only where a hand-written dict left it out
    num_pred: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassMetrics:
        return cls(**{k: d.get(k) for k in _CLASS_FIELDS}, num_gt=d.get("num_gt"), num_pred=d.get("num_pred"))

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in _CLASS_FIELDS}, "num_gt": self.num_gt, "num_pred": self.num_pred}


@dataclass(frozen=True)
class Metrics:
    """What the detection evaluator computed over a set of images.

    ``to_dict`` / ``from_dict`` are its only JSON form: the ``metrics.json`` schema documented in
    ``engine/evaluation/evaluator.py`` (``None`` means undefined, never 0).

    Attributes:
        map50, map: COCO mAP@0.5 and mAP@0.5:0.95, mean over classes with non-crowd GT.
        num_images, num_ground_truth, num_detections: what was evaluated.
        per_class: class name -> :class:`ClassMetrics`, in the annotations' category order.
        confusion_matrix: ``{"labels", "counts" [(C+1) x (C+1)], "normalized", ...}``, counts[gt][pred].
        pr_curves: class name -> ``{"recall": [101], "precision": [101]}`` at IoU 0.5.
        extra: keys a file held beyond these, kept so that reading and writing it loses nothing.
    """

    map50: float | None
    map: float | None
    num_images: int | None = None  # None only where a hand-written dict left them out
    num_ground_truth: int | None = None
    num_detections: int | None = None
    per_class: Mapping[str, ClassMetrics] = field(default_factory=dict)
    confusion_matrix: Mapping[str, Any] = field(default_factory=dict)
    pr_curves: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return list(self.per_class)

    def ap50_of(self, name: str) -> float | None:
        """A class's AP@0.5, ``None`` when undefined or the class is not in these metrics."""
        entry = self.per_class.get(name)
        return None if entry is None else entry.ap50

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Metrics:
        """The record of a metrics dict (``metrics.json``); ``TypeError`` when it is not one."""
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a metrics dict (the evaluator's metrics.json), got {type(d).__name__}")
        per_class = d.get("per_class")
        if not isinstance(per_class, Mapping) or not all(isinstance(v, Mapping) for v in per_class.values()):
            raise TypeError(
                "field 'per_class' must be a dict {class name: {'ap50', 'ap', ...}}, "
                f"got {type(per_class).__name__}; is this the evaluator's metrics.json?"
            )
        return cls(
            map50=d.get("map50"),
            map=d.get("map"),
            **{k: d.get(k) for k in _COUNTS},
            per_class={name: ClassMetrics.from_dict(v) for name, v in per_class.items()},
            confusion_matrix=dict(d.get("confusion_matrix") or {}),
            pr_curves=dict(d.get("pr_curves") or {}),
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` dict: the evaluator's schema, key for key."""
        return {
            "map50": self.map50,
            "map": self.map,
            **{k: getattr(self, k) for k in _COUNTS},
            "per_class": {name: c.to_dict() for name, c in self.per_class.items()},
            "confusion_matrix": dict(self.confusion_matrix),
            "pr_curves": dict(self.pr_curves),
            **self.extra,
        }


_SCORED = ("map50", "map", "source", "checkpoint")


@dataclass(frozen=True)
class Scored:
    """A ``summary.json`` entry naming a model and its headline scores: a run's ``start``, ``baseline`` and
    ``final``, a test split's ``final`` and ``baseline``. ``source`` / ``checkpoint``: which model; the
    rest of the entry (per-class APs, its results file, the reason it was chosen, ...) is ``extra``."""

    map50: float | None
    map: float | None
    source: str | None = None
    checkpoint: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Scored | None:
        """The entry's record; ``None`` for a missing or empty entry."""
        if not d:
            return None
        return cls(*(d.get(k) for k in _SCORED), extra={k: v for k, v in d.items() if k not in _SCORED})
