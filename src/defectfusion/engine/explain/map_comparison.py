"""Map kinds read against their controls: paired differences over the same (image, class) pairs.

Every number here is a mean difference ``a − b`` over the (image, class) pairs both sides have,
with a 95% percentile interval from resampling images (an image's pairs go together, as in
:func:`~.map_quality.summarize_quality`). Its reading comes from where the interval lies:

- **against the detections-only control** (``boxes``), for the pointing game and the AUROC: all
  intervals contain 0 -> "restates the detections"; at least one above 0 and none below ->
  "adds to the detections"; at least one below and none above -> "below the detections-only
  control"; one above and one below -> both named.
- **right class minus wrong class** (class c's map on c's boxes, minus the same map on the boxes
  of the image's other classes, averaged over those classes): every interval above 0 ->
  "class-specific"; some but not all -> "partly class-specific" with the metric named; none above
  and some below -> "higher on the other classes' objects"; else "lights up objects of any class".
- **pairs the detector got wrong**: the pointing game on those pairs, beside the control's there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..evaluation.bootstrap import image_draws
from .map_quality import CONTROL_KIND, METRICS, PairQuality, wrong_detection_pointing_game

EPS = 1e-9  # an interval bound within this of 0 counts as 0 (float noise of equal maps)
RESTATES = "restates the detections"
ADDS = "adds to the detections"
BELOW = "below the detections-only control"
IS_CONTROL = "the detections-only control"
CLASS_SPECIFIC = "class-specific"
ANY_CLASS = "lights up objects of any class"
METRIC_NAMES = {"pointing_game": "pointing game", "auroc": "AUROC"}


@dataclass(frozen=True)
class PairedDifference:
    """The mean of ``a − b`` over ``pairs`` (image, class) pairs; ``interval``: 95% from resampling
    images (None with fewer than two images). ``mean`` is None when no pair is on both sides."""

    mean: float | None
    interval: list[float] | None
    pairs: int

    @property
    def direction(self) -> str | None:
        """ "above" (interval above 0), "below", "within" (contains 0), or None (no interval)."""
        if self.mean is None or self.interval is None:
            return None
        low, high = self.interval
        return "above" if low > EPS else "below" if high < -EPS else "within"

    def to_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "interval": self.interval, "pairs": self.pairs}


def _per_pair(pairs: Sequence[PairQuality], metric: str) -> dict[tuple[int, int], float]:
    """Per (image, class): the mean of ``metric`` over its pairs (a wrong-class side: over the other classes)."""
    sums: dict[tuple[int, int], list[float]] = {}
    for p in pairs:
        value = float(p.hit) if metric == "pointing_game" else p.auroc
        if value is not None:
            acc = sums.setdefault((p.image_id, p.label), [0.0, 0.0])
            acc[0] += value
            acc[1] += 1.0
    return {key: total / count for key, (total, count) in sums.items()}


def paired_difference(
    a: Sequence[PairQuality], b: Sequence[PairQuality], metric: str, draws: int = 1000, seed: int = 0
) -> PairedDifference:
    """``metric`` ("pointing_game" or "auroc") of ``a`` minus that of ``b``, paired by (image, class)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    va, vb = _per_pair(a, metric), _per_pair(b, metric)
    keys = sorted(va.keys() & vb.keys())
    if not keys:
        return PairedDifference(None, None, 0)
    diffs = np.array([va[k] - vb[k] for k in keys])
    images = sorted({k[0] for k in keys})
    column = np.searchsorted(images, [k[0] for k in keys])
    sums, counts = np.zeros(len(images)), np.zeros(len(images))
    np.add.at(sums, column, diffs)
    np.add.at(counts, column, 1.0)
    interval = None
    if len(images) > 1 and draws > 0:
        drawn = image_draws(list(range(len(images))), draws, seed)  # [draws, images] positions
        means = sums[drawn].sum(1) / counts[drawn].sum(1)
        interval = [float(v) for v in np.percentile(means, [2.5, 97.5])]
    return PairedDifference(float(diffs.mean()), interval, len(keys))


def control_reading(differences: Mapping[str, PairedDifference]) -> str:
    """The reading of a kind's differences from the detections-only control (module docstring)."""
    directions = {m: d.direction for m, d in differences.items() if d.direction is not None}
    if not directions:
        return "not compared with the detections-only control (fewer than two images share its pairs)"
    above = [METRIC_NAMES[m] for m, d in directions.items() if d == "above"]
    below = [METRIC_NAMES[m] for m, d in directions.items() if d == "below"]
    if above and below:
        return f"above the detections-only control on the {' and '.join(above)}, below on the {' and '.join(below)}"
    return ADDS if above else BELOW if below else RESTATES


def specificity_reading(differences: Mapping[str, PairedDifference]) -> str:
    """The reading of a kind's right-minus-wrong-class differences (module docstring)."""
    directions = {m: d.direction for m, d in differences.items() if d.direction is not None}
    if not directions:
        return "class specificity not measured (fewer than two images hold two classes)"
    above = [METRIC_NAMES[m] for m, d in directions.items() if d == "above"]
    if len(above) == len(directions):
        return CLASS_SPECIFIC
    if above:
        return f"partly class-specific (the {' and '.join(above)} only)"
    if any(d == "below" for d in directions.values()):
        return "higher on the other classes' objects than on its own"
    return ANY_CLASS


@dataclass
class MapComparison:
    """One map kind against its controls.

    Attributes:
        vs_control: per metric, this kind minus the control kind.
        right_vs_wrong: per metric, right-class minus wrong-class.
        wrong_detections: ``{"pairs", "pointing_game", "control_pointing_game"}`` on the pairs the
            detector got wrong (None where not told or none).
    """

    kind: str
    control: str
    vs_control: dict[str, PairedDifference] = field(default_factory=dict)
    control_reading: str = ""
    right_vs_wrong: dict[str, PairedDifference] = field(default_factory=dict)
    specificity_reading: str = ""
    wrong_detections: dict[str, float | int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "control": self.control,
            "vs_control": {
                **{m: d.to_dict() for m, d in self.vs_control.items()},
                "reading": self.control_reading,
            },
            "class_specificity": {
                **{m: d.to_dict() for m, d in self.right_vs_wrong.items()},
                "reading": self.specificity_reading,
            },
            "wrong_detections": dict(self.wrong_detections),
        }


def class_specificity(
    right: Sequence[PairQuality], wrong: Sequence[PairQuality], draws: int = 1000, seed: int = 0
) -> dict[str, PairedDifference]:
    """Per metric, right-class minus wrong-class, paired by (image, class)."""
    right = [p for p in right if p.against is None]
    wrong = [p for p in wrong if p.against is not None]
    return {m: paired_difference(right, wrong, m, draws, seed) for m in METRICS}


def compare_kinds(
    right: Mapping[str, Sequence[PairQuality]],
    wrong: Mapping[str, Sequence[PairQuality]] | None = None,
    *,
    control: str = CONTROL_KIND,
    draws: int = 1000,
    seed: int = 0,
) -> dict[str, MapComparison]:
    """Every kind of ``right`` (right-class pairs, the control's among them) against the control,
    against the wrong class (``wrong``: wrong-class pairs per kind) and on the wrongly detected pairs.

    Without the control kind, ``vs_control`` is empty and the reading says so.
    """
    wrong = wrong or {}
    base = [p for p in right.get(control, []) if p.against is None]
    base_wrong_pg, _ = wrong_detection_pointing_game(base)
    out: dict[str, MapComparison] = {}
    for kind, pairs in right.items():
        pairs = [p for p in pairs if p.against is None]
        comparison = MapComparison(kind, control)
        if control not in right:
            comparison.control_reading = f"not compared: no detections-only control (`{control}`) was scored"
        else:
            comparison.vs_control = {m: paired_difference(pairs, base, m, draws, seed) for m in METRICS}
            comparison.control_reading = IS_CONTROL if kind == control else control_reading(comparison.vs_control)
        comparison.right_vs_wrong = class_specificity(pairs, wrong.get(kind, []), draws, seed)
        comparison.specificity_reading = specificity_reading(comparison.right_vs_wrong)
        pg, count = wrong_detection_pointing_game(pairs)
        comparison.wrong_detections = {
            "pairs": count,
            "pointing_game": pg,
            "control_pointing_game": base_wrong_pg if control in right else None,
        }
        out[kind] = comparison
    return out
