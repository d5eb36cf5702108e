"""What a study concludes at one training fraction, as one typed result.

Inputs are the runs' scores on the scoring images (:class:`~.study_stats.RunScores`) and what each
run's summary says of itself (:class:`RunInfo`: the phase its final model came from, how much its
fusion head used the text). Out come the arms' means, the primary family and its verdict, the
exploratory families, power, and the checks a reader needs before believing any of it: enough
seeds, runs that did more than fall back to the baseline, a text path that was really used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .intervals import Interval, SeedNoise, t_quantile
from .power import Power, power_of
from .study_stats import (
    BASELINE,
    PRIMARY_METRIC,
    TEXT,
    WITHOUT_FUSION,
    ArmSummary,
    Exploratory,
    RunScores,
    compare_fraction,
    summarize_arm,
)
from .verdict import Verdict, decide

# Below this share of the detector's own logit (mean |text term| / mean |detector term| of the predicted
# class on the test detections, each with its mean over classes taken off), the study says the text path
# was hardly used: it then compares schedules, not words.
USED_SHARE = 0.05
FELL_BACK = frozenset({"baseline", "start"})


@dataclass(frozen=True)
class RunInfo:
    """What a run's own summary says: where its final model came from, how it used the text."""

    key: str
    arm: str
    seed: int
    folder: str
    final_phase: str | None
    final_reason: str | None
    text_usage: Mapping[str, Any] | None = None  # see engine.explain.text_usage (None: no fusion head)
    map50: float | None = None  # its final model's mAP@0.5 on the scoring images

    @property
    def fell_back(self) -> bool:
        return self.final_phase in FELL_BACK

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "arm": self.arm,
            "seed": self.seed,
            "folder": self.folder,
            "final_phase": self.final_phase,
            "final_reason": self.final_reason,
            "text_usage": dict(self.text_usage) if self.text_usage is not None else None,
            "map50": self.map50,
        }


@dataclass
class Manipulation:
    """Did the arms that carry text use it? Per arm, the mean over its runs of the usage numbers."""

    per_arm: dict[str, dict[str, float | None]]
    text_used: bool | None  # None: no text arm, or its runs hold no usage numbers

    def to_dict(self) -> dict[str, Any]:
        return {"per_arm": self.per_arm, "text_used": self.text_used, "used_share": USED_SHARE}


# What a run whose final model is its (plain) baseline used of the text: nothing.
_UNUSED = {"text_share_centered": 0.0, "text_share": 0.0, "flip_share": 0.0, "layer_gate": 0.0}


def manipulation_check(runs: Mapping[str, Sequence[RunInfo]]) -> Manipulation:
    """Per arm with a fusion head, the mean of its runs' text usage; a run that kept its baseline
    (no phase beat it on validation) scored a model without text, and counts as using none."""
    per_arm: dict[str, dict[str, float | None]] = {}
    for arm, infos in runs.items():
        if arm == WITHOUT_FUSION:
            continue
        usages = [r.text_usage or _UNUSED for r in infos if r.text_usage is not None or r.fell_back]
        if not usages:
            continue

        def mean(key: str, usages: list = usages) -> float | None:
            values = [float(u[key]) for u in usages if u.get(key) is not None]
            return float(np.mean(values)) if values else None

        gates = [abs(float(u["layer_gate"])) for u in usages if u.get("layer_gate") is not None]
        per_arm[arm] = {
            # the class-centred share: the part of the text term that can change which class wins
            "share": mean("text_share_centered"),
            "share_with_bias": mean("text_share"),
            "flip_share": mean("flip_share"),
            "mean_abs_gate": float(np.mean(gates)) if gates else None,
            "kept_baseline": sum(r.fell_back for r in infos),
        }
    share = (per_arm.get(TEXT) or {}).get("share")
    return Manipulation(per_arm, None if share is None else share >= USED_SHARE)


@dataclass
class FractionResult:
    """A study's result at one training fraction (``summary.json``'s ``fractions[label]``)."""

    label: str
    fraction: float
    arms: dict[str, ArmSummary]
    runs: dict[str, list[RunInfo]]
    primary: list[Interval]
    exploratory: list[Exploratory]
    seed_noise: dict[str, SeedNoise | None]
    power: list[Power]
    verdict: Verdict
    manipulation: Manipulation
    notes: list[str] = field(default_factory=list)  # seeds, fall-backs: what to know before believing it
    skipped_phases: dict[str, list[str]] = field(default_factory=dict)
    subset: dict[str, Any] | None = None  # the training subset's size (fractions below 1)

    def to_dict(self) -> dict[str, Any]:
        noise = {
            k: None if v is None else {"sd": math.sqrt(v.variance), "df": v.df, "arms": list(v.arms)}
            for k, v in self.seed_noise.items()
        }
        return {
            "fraction": self.fraction,
            "arms": {a: s.to_dict() for a, s in self.arms.items()},
            "runs": {a: [r.to_dict() for r in infos] for a, infos in self.runs.items()},
            "primary": [iv.to_dict() for iv in self.primary],
            "exploratory": [e.to_dict() for e in self.exploratory],
            "seed_noise": noise,
            "power": [p.to_dict() for p in self.power],
            "verdict": self.verdict.to_dict(),
            "manipulation": self.manipulation.to_dict(),
            "notes": self.notes,
            "skipped_phases": self.skipped_phases,
            "subset": self.subset,
        }


def _seed_notes(seeds: int, noise: SeedNoise | None, primary: Sequence[Interval]) -> list[str]:
    if seeds <= 1:
        return [
            "One seed per arm: how much a result moves with the training seed is unknown, so the intervals "
            "cover the test images only and are too narrow by an unknown amount. Run --seeds 3 or more."
        ]
    if seeds >= 3 or noise is None:
        return []
    arms = len(noise.arms)
    quantile, with_three = t_quantile(0.95, noise.df), t_quantile(0.95, arms * 2)
    shares = [
        iv.seed_variance / (iv.seed_variance + iv.image_variance)
        for iv in primary
        if iv.seed_variance and iv.image_variance >= 0
    ]
    seed_share = float(np.mean(shares)) if shares else 0.0
    # the same interval with a third seed: seed variance x 2/3, df from k(S-1) to 2k
    narrower = 1 - (with_three / quantile) * math.sqrt(1 - seed_share / 3)
    return [
        f"2 seeds per arm: the seed variance rests on {noise.df} degrees of freedom (t quantile {quantile:.2f} "
        f"instead of 1.96); a third seed would make the primary intervals about {narrower:.0%} narrower."
    ]


def _fallback_notes(runs: Mapping[str, Sequence[RunInfo]]) -> tuple[list[str], bool]:
    """Sentences about runs whose final model is their baseline; and whether nothing is left to compare."""
    every = [r for infos in runs.values() for r in infos]
    fell = [r for r in every if r.fell_back]
    if every and len(fell) == len(every):
        return [
            "Every run's final model is its baseline: no phase beat it on validation in any run, so the arms "
            "hold the same model and there is nothing to compare. Train the phases longer or with higher "
            "learning rates."
        ], True
    notes = []
    for arm, infos in runs.items():
        n = sum(r.fell_back for r in infos)
        if n:
            notes.append(f"{arm}: {n} of {len(infos)} run(s) kept the baseline (no phase beat it on validation).")
    return notes, False


def _manipulation_notes(manipulation: Manipulation) -> list[str]:
    text = manipulation.per_arm.get(TEXT)
    if text is None or text.get("share") is None:
        return []
    share, flips = text["share"], text.get("flip_share")
    gate = text.get("mean_abs_gate")
    numbers = (
        f"the text term is {share:.1%} of the detector's own class logit on the test detections (both with "
        f"their mean over classes taken off: what can change which class wins)"
    )
    if flips is not None:
        numbers += f" and changes the class of {flips:.1%} of them"
    if gate is not None:
        numbers += f"; mean |gate| of the last layer {gate:.3f}"
    kept = text.get("kept_baseline") or 0
    if kept:
        numbers += f" ({kept} of its runs kept the baseline, whose model has no text: counted as 0)"
    if manipulation.text_used:
        return [f"Manipulation check: {numbers}: the text path was used."]
    return [
        f"Manipulation check: {numbers}. The descriptions were hardly used: this study compares training "
        f"schedules, not language. To let the text path open, raise the fusion head's scalar learning-rate "
        f"multiplier or train the fusion phases longer (docs/method.md)."
    ]


def analyse_fraction(
    label: str,
    fraction: float,
    arms: Mapping[str, Sequence[RunScores]],
    baseline: RunScores,
    runs: Mapping[str, Sequence[RunInfo]],
    class_names: Sequence[str],
    pair: tuple[str, str] | None,
    images: int,
    *,
    verdict_label: str = "",
    skipped_phases: Mapping[str, list[str]] | None = None,
    subset: Mapping[str, Any] | None = None,
) -> FractionResult:
    summaries = {BASELINE: summarize_arm(BASELINE, [baseline.metrics], pair)}
    summaries.update({a: summarize_arm(a, [r.metrics for r in rs], pair) for a, rs in arms.items()})
    comparisons = compare_fraction(arms, baseline, class_names, pair, images)
    noise = comparisons.seed_noise.get(PRIMARY_METRIC)
    power = [power_of(iv, noise) for iv in comparisons.primary if iv.defined]
    verdict = decide(comparisons.primary, verdict_label)
    fallback, nothing = _fallback_notes(runs)
    manipulation = manipulation_check(runs)
    seeds = max((len(rs) for rs in arms.values()), default=0)
    if nothing:
        verdict = Verdict("nothing to compare", [*fallback], verdict.failing)
    else:
        verdict.sentences.extend(_manipulation_notes(manipulation))
    notes = [*_seed_notes(seeds, noise, comparisons.primary), *([] if nothing else fallback)]
    return FractionResult(
        label,
        fraction,
        summaries,
        {a: list(infos) for a, infos in runs.items()},
        comparisons.primary,
        comparisons.exploratory,
        comparisons.seed_noise,
        power,
        verdict,
        manipulation,
        notes,
        dict(skipped_phases or {}),
        dict(subset) if subset is not None else None,
    )
