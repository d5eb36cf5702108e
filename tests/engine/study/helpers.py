"""Made-up runs for the study's tests: scores, bootstrap draws and run records of given values."""

from __future__ import annotations

import numpy as np

from defectfusion.engine.evaluation.bootstrap import Resampled
from defectfusion.engine.study.intervals import ArmValues
from defectfusion.engine.study.study_analysis import RunInfo
from defectfusion.engine.study.study_stats import RunScores
from tests.helpers import fake_metrics


def resampled(values):
    values = np.asarray(values, dtype=float)
    d = len(values)
    return Resampled(
        values,
        values / 2,
        np.stack([values, values], 1),
        np.stack([values, values], 1) / 2,
        np.zeros((d, 3, 3), dtype=np.int64),
    )


def metrics(map50):
    return fake_metrics([map50, map50], [[0, 1, 0], [2, 0, 0], [0, 0, 0]], names=["a", "b"], map_ratio=0.5)


def runs(arm, values, rng):
    return [RunScores(f"{arm}/{k}", metrics(v), resampled(v + rng.normal(0, 0.01, 200))) for k, v in enumerate(values)]


def info(arm, k, phase="phase2", share=0.2):
    usage = (
        None
        if arm == "continued"
        else {
            "text_share_centered": share,
            "text_share": 2 * share,
            "flip_share": 0.01,
            "gates": [0.1, -0.2],
            "layer_gate": -0.15,
        }
    )
    return RunInfo(f"{arm}/{k}", arm, k, f"/runs/{arm}/{k}", phase, "best on val", usage)


def arm(name, observed, draws, fixed=False):
    return ArmValues(name, np.asarray(observed, dtype=float), np.asarray(draws, dtype=float), fixed)
