"""The explanation summary's words come from its comparisons: no threshold "bar", the control named, "points at
the objects" only for a kind that beats the detections-only control, faithfulness claimed only when measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defectfusion.engine.explain.map_comparison import compare_kinds
from defectfusion.engine.explain.map_quality import CONTROL_KIND, image_pairs, summarize_quality
from defectfusion.report.explain_summary import Example, control_rows, write_summary
from defectfusion.report.map_readings import NONE_BEATS, NOT_MEASURED, choose_default_kind, reading

SIZE = (48, 64)
NAMES = ["crack", "scratch"]
POINTS = "points at the objects"


def _filled(boxes) -> torch.Tensor:
    m = torch.zeros(SIZE)
    for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4):
        m[int(y1) : int(y2), int(x1) : int(x2)] = 1.0
    return m


@pytest.fixture(scope="module")
def scored():
    """Ten two-class images: the control misses every third one, ``better`` never does, ``same`` is the control,
    ``any`` is one map for both classes."""
    right: dict[str, list] = {}
    wrong: dict[str, list] = {}
    for i in range(10):
        top, bottom = np.array([5.0, 4.0, 20.0, 18.0]), np.array([35.0, 26.0, 58.0, 44.0])
        boxes = np.stack([top, bottom] if i % 2 else [bottom, top])
        labels = np.array([0, 1])
        own = torch.stack([_filled(boxes[labels == c]) for c in range(2)])
        control = torch.zeros_like(own) if i % 3 == 0 else own
        everything = _filled(boxes)
        maps = {CONTROL_KIND: control, "same": control.clone(), "better": own, "any": torch.stack([everything] * 2)}
        got = image_pairs(maps, i, boxes, labels, border=0, detected={0: i % 3 != 0, 1: i % 3 != 0})
        for kind in maps:
            right.setdefault(kind, []).extend(got.right[kind])
            wrong.setdefault(kind, []).extend(got.wrong[kind])
    quality = {k: summarize_quality(k, pairs, NAMES, draws=200) for k, pairs in right.items()}
    return quality, compare_kinds(right, wrong, draws=200), right


def test_readings_say_points_at_the_objects_only_for_a_kind_that_beats_the_control(scored):
    """``better`` beats the control and is class-specific; ``same`` restates it; ``any`` (one map for both
    classes) is higher on objects than the control where it missed, but of any class. Fails if the reading came
    from a fixed threshold (``same`` and the control score PG 0.6 and AUROC 0.8, ``any`` PG 0.5) or if the
    comparisons were ignored."""
    quality, comparisons, _ = scored
    words = {k: reading(quality[k].overall, comparisons[k]) for k in quality}
    assert POINTS in words["better"] and "class-specific" in words["better"]
    assert POINTS not in words["same"] and "restates the detections" in words["same"]
    assert comparisons["any"].control_reading == "adds to the detections"  # by its AUROC: the control missed
    assert "lights up objects of any class" in words["any"] and "class-specific" not in words["any"]
    assert "detections-only control" in words[CONTROL_KIND]
    assert all(POINTS not in reading(q.overall) for q in quality.values())  # no control given: no such claim
    rows = control_rows(comparisons)
    wrong = {r["map kind"]: r["PG where the detection is wrong"] for r in rows}
    assert wrong[CONTROL_KIND].startswith("0.00 (n=8") and wrong["better"].startswith("1.00 (n=8")


def test_the_page_names_the_control_speaks_of_no_bar_and_says_faithfulness_was_not_measured(scored, tmp_path):
    """Fails if the old threshold words ("the bar", ``LOCALISES``) came back, if the page claimed a default kind
    without faithfulness, or if the JSON lost the numbers its sentences come from."""
    quality, comparisons, right = scored
    thumb = np.zeros((*SIZE, 3), dtype=np.uint8)
    gallery = [Example(q, thumb, _filled([[5, 4, 20, 18]]).numpy(), np.array([[5, 4, 20, 18]]), tmp_path / f"im{n}")
               for n, q in enumerate(right["better"][:4])]  # fmt: skip
    files = write_summary(tmp_path / "out", quality, "sampling", {CONTROL_KIND: "the detections"}, gallery, NAMES,
                          examples=2, source="val.json", comparisons=comparisons)  # fmt: skip
    md = files.md.read_text()
    assert "bar" not in md.lower() and "`boxes`" in md and "detections-only control" in md
    assert NOT_MEASURED in md.lower() or NOT_MEASURED[1:] in md
    saved = json.loads(files.json.read_text())
    adds = [k for k, q in saved["quality"].items() if q["vs_control"]["reading"] == "adds to the detections"]
    assert sorted(adds) == ["any", "better"]
    assert all((POINTS in q["reads_as"]) == (k in adds) for k, q in saved["quality"].items())
    assert md.count(POINTS) == len(adds)  # their rows of the table, nowhere else
    assert saved["control"] == CONTROL_KIND and saved["faithfulness_measured"] is False
    assert saved["default_choice"]["kind"] is None and saved["default_choice"]["why"] == NOT_MEASURED
    assert saved["quality"]["same"]["vs_control"]["reading"] == "restates the detections"
    assert saved["quality"]["any"]["class_specificity"]["reading"] == "lights up objects of any class"
    assert saved["quality"]["better"]["overall"]["pairs"] == 20
    assert all("bar" not in q["reads_as"] for q in saved["quality"].values())
    names = {Path(p).name for p in files.pngs}
    assert {"map_quality.png", "map_controls.png", "best_examples.png", "worst_examples.png"} <= names


def test_the_default_kind_is_the_one_whose_faithfulness_beats_the_control(scored, tmp_path):
    """Fails if the control could choose itself, if the sign of the deletion difference were read the wrong way
    (higher deletion AUC is less faithful), or if a kind were chosen with no faithfulness measured."""
    quality, comparisons, _ = scored
    assert choose_default_kind(quality, comparisons, None) == (None, NOT_MEASURED)
    level = {"deletion_auc": 0.30, "deletion_vs_boxes": [-0.02, 0.03], "reading": "box-like"}
    worse = {"deletion_auc": 0.40, "deletion_vs_boxes": [0.05, 0.10]}
    assert choose_default_kind(quality, comparisons, {"same": level, "any": worse}) == (None, NONE_BEATS)
    faithful = {"deletion_auc": 0.12, "deletion_vs_boxes": [-0.20, -0.08]}
    more = {"deletion_auc": 0.10, "versus": {"boxes": {"deletion_interval": [-0.3, -0.1], "insertion_interval": None}}}
    control = {"deletion_auc": 0.01, "deletion_vs_boxes": [-0.5, -0.4]}  # nonsense for the control: never chosen
    table = {"same": level, "better": faithful, "any": more, CONTROL_KIND: control}
    kind, why = choose_default_kind(quality, comparisons, table)
    assert kind == "any" and "beats the detections-only control" in why and "2 kinds" in why
    kind, _ = choose_default_kind(quality, comparisons, {"better": faithful, "same": level})
    assert kind == "better"
    files = write_summary(tmp_path / "f", quality, "better", {}, [], NAMES, comparisons=comparisons,
                          faithfulness={"better": faithful, "same": level})  # fmt: skip
    saved = json.loads(files.json.read_text())
    assert saved["default_choice"]["kind"] == "better" and saved["faithfulness_measured"] is True
    assert saved["quality"]["better"]["faithfulness"] == faithful
    assert "bar" not in files.md.read_text().lower()
