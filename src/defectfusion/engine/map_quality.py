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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .bootstrap import image_draws

DEFAULT_TOLERANCE = 15.0  # pixels, as in the pointing game's original protocol
AUROC_MAX_SIDE = 160  # maps are subsampled to about this many pixels per side for the AUROC


@dataclass(frozen=True)
class PairQuality:
    """One (image, class) pair: how the class's map relates to that class's boxes.

    ``auroc`` is None when the pair has no object or no background pixel left after masking.
    """

    image_id: int
    label: int
    hit: bool
    chance: float
    auroc: float | None


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
    if positive.size == 0 or negative.size == 0:
        return None
    values = np.concatenate([positive, negative]).astype(np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    # average rank of each distinct value (1-based), so tied pixels share their rank
    upper = np.cumsum(counts)
    average_rank = upper - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    n_pos, n_neg = positive.size, negative.size
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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
    values = class_map.detach().float().cpu().numpy()
    valid_np = valid.cpu().numpy()
    H, W = values.shape
    ys, xs = np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64)
    target = _box_mask(class_boxes, ys, xs, grow=tolerance) & valid_np
    chance = float(target.sum() / max(1, valid_np.sum()))
    counted = values[valid_np]
    if counted.size == 0 or counted.max() <= counted.min():  # a constant map points nowhere
        hit = False
    else:
        masked = np.where(valid_np, values, -np.inf)
        y, x = np.unravel_index(int(np.argmax(masked)), masked.shape)
        hit = bool(target[y, x])

    step = max(1, int(np.ceil(max(H, W) / AUROC_MAX_SIDE)))
    sub_y, sub_x = ys[step // 2 :: step], xs[step // 2 :: step]
    sub_values = values[step // 2 :: step, step // 2 :: step]
    sub_valid = valid_np[step // 2 :: step, step // 2 :: step]
    inside = _box_mask(class_boxes, sub_y, sub_x) & sub_valid
    background = ~_box_mask(all_boxes, sub_y, sub_x) & sub_valid
    return PairQuality(image_id, label, hit, chance, auroc(sub_values[inside], sub_values[background]))


@dataclass
class QualitySummary:
    """Per class and overall means of a map kind's pairs, with 95% intervals from resampling images.

    ``per_class`` maps a class name to ``{"pairs", "pointing_game", "chance", "auroc"}``;
    ``overall`` has the same keys plus ``pointing_game_interval`` and ``auroc_interval``.
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


def summarize_quality(
    kind: str, pairs: Sequence[PairQuality], class_names: Sequence[str], draws: int = 1000, seed: int = 0
) -> QualitySummary:
    """Means per class and overall; the overall intervals resample images (their pairs go together)."""
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
    return QualitySummary(kind, per_class, overall)


def explanation_pairs(
    class_maps: dict[str, torch.Tensor],
    image_id: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    border: int | None = None,
    padding: torch.Tensor | None = None,
) -> dict[str, list[PairQuality]]:
    """Per map kind, one :class:`PairQuality` for every class present in ``labels``.

    Args:
        class_maps: per kind, ``[C, H, W]`` maps at the image's size.
        boxes: ``[N, 4]`` ground-truth xyxy pixels; labels: ``[N]`` class indexes.
        border: pixels left out along the edges (default :func:`default_border`).
        padding: ``[H, W]`` bool, True on letterbox padding (left out).
    """
    if not class_maps:
        return {}
    size = tuple(next(iter(class_maps.values())).shape[-2:])
    valid = valid_area(size, default_border(size) if border is None else border, padding)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    out: dict[str, list[PairQuality]] = {}
    for kind, maps in class_maps.items():
        out[kind] = [
            pair_quality(image_id, int(c), maps[int(c)], boxes[labels == c], boxes, valid, tolerance)
            for c in sorted(set(labels.tolist()))
        ]
    return out
