"""How well explanation maps localise: the pointing game and the inside-vs-background AUROC.

For one image, one class present in its ground truth, and that class's map ``[H, W]``:

- **pointing game** (Zhang et al., ECCV 2016): a hit when the map's maximum lies inside a
  ground-truth box of that class, each box grown by ``tolerance`` pixels. Chance is the share of
  the valid area covered by those grown boxes (where a uniformly random point would land).
- **AUROC**: map values at pixels inside that class's boxes against pixels outside every box:
  the probability that a random object pixel scores above a random background pixel (0.5: no
  information; below 0.5: the map is *lower* on the objects).

Pixels outside ``valid`` (letterbox padding) and a border of ``border`` pixels are left out of
both, so a peak on the padding or on the image edge neither hits nor misses. Results are kept per
(image, class) pair; :func:`summarize_quality` averages them per class and overall, with a
percentile interval from resampling images.

Absolute numbers say little on their own: a map that peaks where the detector put its box points
at the object whenever the detection is right. So every kind is also read against controls
(:func:`.map_comparison.compare_kinds`), each a paired difference over the same (image, class)
pairs with a 95% interval from resampling images:

- **the detections-only control** (kind ``boxes``: the detections drawn as maps): a kind whose
  difference interval contains 0 *restates the detections*; above 0 it *adds to the detections*;
- **the wrong class**: class c's map scored against the boxes of the image's other classes; right
  minus wrong above 0 means the map is *class-specific*, else it lights up objects of any class;
- **pairs the detector got wrong** (its best box of the class is not on an object of that class,
  :func:`best_box_on_object`): the pointing game there, where a map that copies the detection fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..evaluation.bootstrap import image_draws

DEFAULT_TOLERANCE = 15.0  # pixels, as in the pointing game's original protocol
AUROC_MAX_SIDE = 160  # maps are subsampled to about this many pixels per side for the AUROC
CONTROL_KIND = "boxes"  # the detections-only control: the detections drawn as maps, nothing of the model inside
DETECTION_IOU = 0.5  # a detection lies on an object when its IoU with one of that class's boxes reaches this
METRICS = ("pointing_game", "auroc")


@dataclass(frozen=True)
class PairQuality:
    """One (image, class) pair: how the class's map relates to that class's boxes.

    ``auroc`` is None when the pair has no object or no background pixel left after masking.
    ``detected``: whether the detector's best box of ``label`` lies on an object of that class (None:
    not told). ``against``: None for the map scored against its own class's boxes; for a wrong-class
    pair, the class whose boxes it was scored against instead.
    """

    image_id: int
    label: int
    hit: bool
    chance: float
    auroc: float | None
    detected: bool | None = None
    against: int | None = None


def valid_area(size: tuple[int, int], border: int, padding: torch.Tensor | None = None) -> torch.Tensor:
    """``[H, W]`` bool: pixels that count (not padding, not within ``border`` of the edge)."""
    H, W = size
    valid = torch.ones(H, W, dtype=torch.bool) if padding is None else ~padding.bool().cpu()
    if border > 0:
        b_h, b_w = min(border, H // 2), min(border, W // 2)
        valid[:b_h], valid[H - b_h :], valid[:, :b_w], valid[:, W - b_w :] = False, False, False, False
    return valid


def default_border(size: tuple[int, int]) -> int:
    """2% of the shorter side, at least 2 pixels: where upsampling and convolution padding peak."""
    return max(2, round(0.02 * min(size)))


def _box_mask(boxes: np.ndarray, ys: np.ndarray, xs: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """Bool ``[len(ys), len(xs)]``: pixel centres inside any of ``boxes`` (xyxy), each grown by ``grow``."""
    inside = np.zeros((len(ys), len(xs)), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        rows = (ys + 0.5 >= y1 - grow) & (ys + 0.5 <= y2 + grow)
        cols = (xs + 0.5 >= x1 - grow) & (xs + 0.5 <= x2 + grow)
        inside |= rows[:, None] & cols[None, :]
    return inside


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """Mann-Whitney AUROC of ``positive`` over ``negative`` scores, ties counted half."""
    return _auroc_sorted(np.asarray(positive), np.sort(np.asarray(negative, dtype=np.float64).ravel()))


def _auroc_sorted(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """:func:`auroc` with ``negative`` already sorted (float64): per positive, the negatives below it plus
    half those equal to it."""
    if positive.size == 0 or negative.size == 0:
        return None
    values = positive.astype(np.float64).ravel()
    below = np.searchsorted(negative, values, side="left")
    level = np.searchsorted(negative, values, side="right") - below
    return float((below.sum() + 0.5 * level.sum()) / (values.size * negative.size))


def _pixel_axes(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(size[0], dtype=np.float64), np.arange(size[1], dtype=np.float64)


def chance_share(class_boxes: np.ndarray, valid: torch.Tensor, tolerance: float = DEFAULT_TOLERANCE) -> float:
    """The pointing game's chance level: the share of the valid area within ``tolerance`` px of ``class_boxes``."""
    valid_np = valid.cpu().numpy()
    ys, xs = _pixel_axes(valid_np.shape)
    target = _box_mask(np.asarray(class_boxes, dtype=np.float64).reshape(-1, 4), ys, xs, grow=tolerance) & valid_np
    return float(target.sum() / max(1, valid_np.sum()))


class PreparedMap:
    """One class map ``[H, W]`` made ready once to be scored against any boxes of its image: the
    position of its maximum over ``valid`` (None for a constant map, which points nowhere) and its
    subsampled values, the background ones (outside every one of ``all_boxes``) sorted for the AUROC."""

    def __init__(self, class_map: torch.Tensor, all_boxes: np.ndarray, valid: torch.Tensor) -> None:
        values = class_map.detach().float().cpu().numpy()
        valid_np = valid.cpu().numpy()
        self.valid = valid
        counted = values[valid_np]
        self.peak: tuple[int, int] | None = None
        if counted.size and counted.max() > counted.min():
            masked = np.where(valid_np, values, -np.inf)
            self.peak = tuple(int(v) for v in np.unravel_index(int(np.argmax(masked)), masked.shape))
        ys, xs = _pixel_axes(values.shape)
        step = max(1, int(np.ceil(max(values.shape) / AUROC_MAX_SIDE)))
        self.sub_y, self.sub_x = ys[step // 2 :: step], xs[step // 2 :: step]
        self.sub_values = values[step // 2 :: step, step // 2 :: step]
        self.sub_valid = valid_np[step // 2 :: step, step // 2 :: step]
        all_boxes = np.asarray(all_boxes, dtype=np.float64).reshape(-1, 4)
        background = ~_box_mask(all_boxes, self.sub_y, self.sub_x) & self.sub_valid
        self.background = np.sort(self.sub_values[background].astype(np.float64))

    def score(
        self,
        image_id: int,
        label: int,
        boxes: np.ndarray,
        tolerance: float = DEFAULT_TOLERANCE,
        chance: float | None = None,
    ) -> PairQuality:
        """The pointing game and AUROC of this map against ``boxes`` ``[n, 4]`` (``chance``: from
        :func:`chance_share`, computed here when not given)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if chance is None:
            chance = chance_share(boxes, self.valid, tolerance)
        hit = False
        if self.peak is not None:
            y, x = self.peak
            hit = bool(_box_mask(boxes, np.array([float(y)]), np.array([float(x)]), grow=tolerance)[0, 0])
        inside = _box_mask(boxes, self.sub_y, self.sub_x) & self.sub_valid
        return PairQuality(image_id, label, hit, chance, _auroc_sorted(self.sub_values[inside], self.background))


def pair_quality(
    image_id: int,
    label: int,
    class_map: torch.Tensor,
    class_boxes: np.ndarray,
    all_boxes: np.ndarray,
    valid: torch.Tensor,
    tolerance: float = DEFAULT_TOLERANCE,
) -> PairQuality:
    """The pointing game and AUROC of one class map ``[H, W]`` against that class's boxes ``[n, 4]``."""
    return PreparedMap(class_map, all_boxes, valid).score(image_id, label, class_boxes, tolerance)


@dataclass
class QualitySummary:
    """Per class and overall means of a map kind's pairs, with 95% intervals from resampling images.

    ``per_class`` maps a class name to ``{"pairs", "pointing_game", "chance", "auroc"}``;
    ``overall`` has the same keys plus ``pointing_game_interval`` and ``auroc_interval``, and
    ``wrong_detection_pairs`` (how many pairs the detector got wrong; None when not told) and
    ``wrong_detection_pointing_game`` (the pointing game on those pairs only; None when there are none).
    """

    kind: str
    per_class: dict[str, dict[str, float | int | None]]
    overall: dict[str, float | int | list[float] | None]

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "per_class": self.per_class, "overall": self.overall}


def _means(pairs: Sequence[PairQuality]) -> dict[str, float | int | None]:
    aurocs = [p.auroc for p in pairs if p.auroc is not None]
    return {
        "pairs": len(pairs),
        "pointing_game": float(np.mean([p.hit for p in pairs])) if pairs else None,
        "chance": float(np.mean([p.chance for p in pairs])) if pairs else None,
        "auroc": float(np.mean(aurocs)) if aurocs else None,
    }


def wrong_detection_pointing_game(pairs: Sequence[PairQuality]) -> tuple[float | None, int | None]:
    """(pointing game, count) on the pairs whose ``detected`` is False; (None, None) when no pair was told."""
    if all(p.detected is None for p in pairs):
        return None, None
    wrong = [p.hit for p in pairs if p.detected is False and p.against is None]
    return (float(np.mean(wrong)) if wrong else None), len(wrong)


def summarize_quality(
    kind: str, pairs: Sequence[PairQuality], class_names: Sequence[str], draws: int = 1000, seed: int = 0
) -> QualitySummary:
    """Means per class and overall; the overall intervals resample images (their pairs go together).

    Wrong-class pairs (``against`` set) are left out: they are :func:`.map_comparison.class_specificity`'s.
    """
    pairs = [p for p in pairs if p.against is None]
    per_class = {
        name: _means([p for p in pairs if p.label == c])
        for c, name in enumerate(class_names)
        if any(p.label == c for p in pairs)
    }
    overall: dict[str, float | int | list[float] | None] = dict(_means(pairs))
    by_image: dict[int, list[PairQuality]] = {}
    for p in pairs:
        by_image.setdefault(p.image_id, []).append(p)
    if len(by_image) > 1 and draws > 0:
        ids = sorted(by_image)
        hits, aurocs = [], []
        for draw in image_draws(ids, draws, seed):
            drawn = [p for i in draw for p in by_image[int(i)]]
            hits.append(np.mean([p.hit for p in drawn]))
            values = [p.auroc for p in drawn if p.auroc is not None]
            if values:
                aurocs.append(np.mean(values))
        overall["pointing_game_interval"] = [float(v) for v in np.percentile(hits, [2.5, 97.5])]
        if aurocs:
            overall["auroc_interval"] = [float(v) for v in np.percentile(aurocs, [2.5, 97.5])]
    pg, count = wrong_detection_pointing_game(pairs)
    overall["wrong_detection_pairs"], overall["wrong_detection_pointing_game"] = count, pg
    return QualitySummary(kind, per_class, overall)


@dataclass
class ImagePairs:
    """One image's pairs per map kind: ``right`` (each class's map on its own boxes) and ``wrong``
    (each class's map on the boxes of each other class present, ``against`` naming that class)."""

    right: dict[str, list[PairQuality]] = field(default_factory=dict)
    wrong: dict[str, list[PairQuality]] = field(default_factory=dict)


def image_pairs(
    class_maps: Mapping[str, torch.Tensor],
    image_id: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    *,
    detected: Mapping[int, bool] | None = None,
    wrong_class: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    border: int | None = None,
    padding: torch.Tensor | None = None,
) -> ImagePairs:
    """Per map kind, a right-class :class:`PairQuality` for every class present in ``labels`` and
    (``wrong_class``) a wrong-class one for every ordered pair of distinct classes present.

    Args:
        class_maps: per kind, ``[C, H, W]`` maps at the image's size.
        boxes: ``[N, 4]`` ground-truth xyxy pixels; labels: ``[N]`` class indexes.
        detected: per class index present, whether the detector's best box of that class lies on
            an object of that class (:func:`best_box_on_object`); kept on the right-class pairs.
        border: pixels left out along the edges (default :func:`default_border`).
        padding: ``[H, W]`` bool, True on letterbox padding (left out).
    """
    out = ImagePairs()
    if not class_maps:
        return out
    size = tuple(next(iter(class_maps.values())).shape[-2:])
    valid = valid_area(size, default_border(size) if border is None else border, padding)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    present = sorted(set(labels.tolist()))
    told = detected or {}
    chance = {c: chance_share(boxes[labels == c], valid, tolerance) for c in present}
    for kind, maps in class_maps.items():
        right, wrong = [], []
        for c in present:
            prepared = PreparedMap(maps[c], boxes, valid)
            q = prepared.score(image_id, c, boxes[labels == c], tolerance, chance[c])
            right.append(replace(q, detected=told.get(c)))
            if wrong_class:
                for d in (d for d in present if d != c):
                    q = prepared.score(image_id, c, boxes[labels == d], tolerance, chance[d])
                    wrong.append(replace(q, against=d))
        out.right[kind], out.wrong[kind] = right, wrong
    return out


def explanation_pairs(
    class_maps: dict[str, torch.Tensor],
    image_id: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    border: int | None = None,
    padding: torch.Tensor | None = None,
    detected: Mapping[int, bool] | None = None,
) -> dict[str, list[PairQuality]]:
    """Per map kind, one :class:`PairQuality` for every class present in ``labels`` (the right-class
    pairs of :func:`image_pairs`, which also gives the wrong-class ones)."""
    pairs = image_pairs(
        class_maps,
        image_id,
        boxes,
        labels,
        detected=detected,
        wrong_class=False,
        tolerance=tolerance,
        border=border,
        padding=padding,
    )
    return pairs.right


def _numpy(x: object, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def best_box_on_object(
    det_boxes: np.ndarray | torch.Tensor,
    det_scores: np.ndarray | torch.Tensor,
    det_labels: np.ndarray | torch.Tensor,
    gt_boxes: np.ndarray | torch.Tensor,
    gt_labels: np.ndarray | torch.Tensor,
    iou_threshold: float = DETECTION_IOU,
) -> dict[int, bool]:
    """Per class present in ``gt_labels``: whether the detector got that class right in this image.

    True when the highest-scoring detection of the class (``[N, 4]`` xyxy boxes, ``[N]`` scores,
    ``[N]`` labels, in the ground truth's pixels) has IoU >= ``iou_threshold`` with one of that
    class's ``[M, 4]`` boxes; False when it has not, or when there is no detection of the class.
    """
    boxes, scores = _numpy(det_boxes, np.float64).reshape(-1, 4), _numpy(det_scores, np.float64).reshape(-1)
    labels = _numpy(det_labels, np.int64).reshape(-1)
    gt, gt_lab = _numpy(gt_boxes, np.float64).reshape(-1, 4), _numpy(gt_labels, np.int64).reshape(-1)
    out: dict[int, bool] = {}
    for c in sorted(set(gt_lab.tolist())):
        mine = np.flatnonzero(labels == c)
        if mine.size == 0:
            out[c] = False
            continue
        x1, y1, x2, y2 = boxes[mine[np.argmax(scores[mine])]]
        targets = gt[gt_lab == c]
        iw = np.clip(np.minimum(x2, targets[:, 2]) - np.maximum(x1, targets[:, 0]), 0, None)
        ih = np.clip(np.minimum(y2, targets[:, 3]) - np.maximum(y1, targets[:, 1]), 0, None)
        inter = iw * ih
        union = (x2 - x1) * (y2 - y1) + (targets[:, 2] - targets[:, 0]) * (targets[:, 3] - targets[:, 1]) - inter
        out[c] = bool(np.any(inter / np.maximum(union, 1e-12) >= iou_threshold))
    return out
