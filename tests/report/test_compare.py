"""Baseline comparison tables: deltas, undefined values, and the confusion pair read from the right cells."""

from __future__ import annotations

import re

import pytest

from defectfusion.errors import DefectFusionError
from defectfusion.report.compare import (
    compare_many,
    compare_metrics,
    confusion_pair,
    pair_counts,
    pair_table,
    per_class_rows,
)
from defectfusion.report.values import MISSING, OVERALL, markdown_table

LABELS = ["CRACK", "SCRATCH", "HOLE", "background"]


def metrics(ap50: dict, ap: dict | None = None, counts=None, labels=LABELS, map50=None, map_=None) -> dict:
    ap = ap or {k: (None if v is None else v / 2) for k, v in ap50.items()}
    return {
        "map50": map50,
        "map": map_,
        "num_images": 10,
        "num_ground_truth": 30,
        "num_detections": 28,
        "per_class": {
            k: {
                "ap50": v,
                "ap": ap[k],
                "precision": v,
                "recall": v,
                "f1": v,
                "conf": 0.3,
                "num_gt": 0 if v is None else 10,
                "num_pred": 5,
            }
            for k, v in ap50.items()
        },
        "confusion_matrix": {"labels": labels, "counts": counts or [[0] * len(labels) for _ in labels]},
    }


def test_deltas_per_class_and_overall():
    before = metrics({"CRACK": 0.576, "SCRATCH": 0.806, "HOLE": 0.924}, map50=0.769, map_=0.4)
    after = metrics({"CRACK": 0.672, "SCRATCH": 0.835, "HOLE": 0.921}, map50=0.809, map_=0.45)
    table = compare_metrics(before, after)
    assert table.labels == ("before", "after")
    crack = table.row("CRACK")
    assert crack.values["ap50"] == (0.576, 0.672)
    assert crack.deltas("ap50")[0] == pytest.approx(0.096)
    assert crack.deltas("ap")[0] == pytest.approx(0.048)
    assert table.row("HOLE").deltas("ap50")[0] == pytest.approx(-0.003)
    overall = table.row(OVERALL)
    assert overall.overall and overall.deltas("ap50")[0] == pytest.approx(0.04)
    assert overall.deltas("ap")[0] == pytest.approx(0.05)

    rows = {r["class"]: r for r in table.to_rows()}
    assert rows["CRACK"]["ap50_before"] == 0.576 and rows["CRACK"]["ap50_after"] == 0.672
    assert rows["CRACK"]["ap50_delta_after"] == pytest.approx(0.096)
    assert rows["CRACK"]["num_gt"] == 10

    md = table.to_markdown()
    assert "| CRACK | 10 | 0.576 | 0.672 | +0.096 |" in md
    assert "-0.003" in md


def test_undefined_values_stay_undefined():
    before = metrics({"CRACK": 0.5, "SCRATCH": None, "HOLE": 0.9}, map50=0.7)
    after = metrics({"CRACK": 0.6, "SCRATCH": 0.8})  # HOLE missing entirely, map50 null
    table = compare_metrics(before, after)
    scratch, hole = table.row("SCRATCH"), table.row("HOLE")
    assert scratch.values["ap50"] == (None, 0.8) and scratch.deltas("ap50") == (None,)
    assert hole.values["ap50"] == (0.9, None) and hole.deltas("ap50") == (None,)
    assert table.row(OVERALL).deltas("ap50") == (None,)
    display = {r["class"]: r for r in table.to_display_rows()}
    assert display["SCRATCH"]["AP@0.5 before"] == MISSING
    assert display["SCRATCH"]["Δ AP@0.5"] == MISSING
    assert display["HOLE"]["AP@0.5 after"] == MISSING
    md = table.to_markdown()
    assert "| SCRATCH | 0 | – | 0.800 | – |" in md
    assert "0.000" not in md  # nothing undefined was turned into a zero
    assert [r["ap50_after"] for r in table.to_rows() if r["class"] == "HOLE"] == [None]


def test_nan_and_coco_minus_one_are_undefined():
    before = metrics({"CRACK": float("nan"), "SCRATCH": -1.0, "HOLE": 0.5})
    table = compare_metrics(before, before)
    assert table.row("CRACK").values["ap50"] == (None, None)
    assert table.row("SCRATCH").values["ap50"] == (None, None)


def test_class_order_and_names():
    before = metrics({"CRACK": 0.5, "SCRATCH": 0.6})
    after = metrics({"SCRATCH": 0.7, "HOLE": 0.8})
    assert [r.name for r in compare_metrics(before, after).class_rows] == ["CRACK", "SCRATCH", "HOLE"]
    table = compare_metrics(before, after, class_names=["HOLE", "CRACK"])
    assert [r.name for r in table.class_rows] == ["HOLE", "CRACK"]
    with pytest.raises(DefectFusionError, match="Did you mean 'CRACK'"):
        table.row("CRAK")


def test_compare_many_deltas_against_first():
    a = metrics({"CRACK": 0.5}, map50=0.5)
    b = metrics({"CRACK": 0.6}, map50=0.6)
    c = metrics({"CRACK": 0.4}, map50=None)
    table = compare_many([("defects6.yml", a), ("short.yml", b), ("contrast.yml", c)])
    crack = table.row("CRACK")
    assert crack.deltas("ap50") == pytest.approx((0.1, -0.1))
    row = table.to_rows()[0]
    assert row["ap50_delta_short.yml"] == pytest.approx(0.1)
    assert row["ap50_delta_contrast.yml"] == pytest.approx(-0.1)
    assert "ap50_delta_defects6.yml" not in row
    display = table.to_display_rows(("ap50",))[0]
    assert display["Δ AP@0.5 short.yml"] == "+0.100" and display["Δ AP@0.5 contrast.yml"] == "-0.100"
    with pytest.raises(DefectFusionError, match="unique"):
        compare_many([("x", a), ("x", b)])
    with pytest.raises(DefectFusionError, match="per_class"):
        compare_many([("x", {"map50": 0.5})])


def test_pair_counts_rows_are_ground_truth_columns_are_predictions():
    # GT CRACK predicted as SCRATCH: 12 (row 0, col 1); GT SCRATCH predicted as CRACK: 3 (row 1, col 0)
    before = metrics({"CRACK": 0.5}, counts=[[40, 12, 1, 5], [3, 50, 0, 2], [0, 0, 30, 1], [2, 4, 0, 0]])
    # the other evaluation lists its labels in another order: the lookup is by name
    labels = ["SCRATCH", "CRACK", "HOLE", "background"]
    after = metrics({"CRACK": 0.6}, labels=labels, counts=[[50, 4, 0, 2], [7, 45, 1, 5], [0, 0, 30, 1], [4, 2, 0, 0]])
    assert pair_counts(before, "CRACK", "SCRATCH") == (12, 3)
    assert pair_counts(after, "CRACK", "SCRATCH") == (7, 4)
    pair = confusion_pair(before, after, "CRACK", "SCRATCH")
    assert (pair.a_as_b_before, pair.a_as_b_after, pair.b_as_a_before, pair.b_as_a_after) == (12, 7, 3, 4)
    assert pair.sentence() == "CRACK called SCRATCH: 12 -> 7 (-5)"
    assert pair.reverse_sentence() == "SCRATCH called CRACK: 3 -> 4 (+1)"
    rows = pair.to_rows(("baseline", "fused"))
    assert rows[0] == {
        "ground truth": "CRACK",
        "predicted as": "SCRATCH",
        "baseline": 12,
        "fused": 7,
        "Δ": "-5",
    }
    single = confusion_pair(before, None, "CRACK", "SCRATCH")
    assert single.sentence() == "CRACK called SCRATCH: 12"
    assert pair_counts(before, "CRACK", "background") == (5, 2)  # missed cracks, false-positive cracks


def test_pair_errors_name_the_valid_classes():
    m = metrics({"CRACK": 0.5})
    with pytest.raises(DefectFusionError, match="SCRACH.*valid: CRACK, SCRATCH.*Did you mean 'SCRATCH'"):
        pair_counts(m, "CRACK", "SCRACH")
    with pytest.raises(DefectFusionError, match="confusion_matrix"):
        pair_counts({"per_class": {}}, "CRACK", "SCRATCH")


def test_pair_table_for_description_sets():
    a = metrics({"CRACK": 0.5, "SCRATCH": 0.8}, counts=[[40, 12, 0, 0], [3, 50, 0, 0], [0] * 4, [0] * 4], map50=0.6)
    b = metrics({"CRACK": 0.6, "SCRATCH": None}, counts=[[40, 9, 0, 0], [3, 50, 0, 0], [0] * 4, [0] * 4], map50=0.65)
    rows = pair_table([("defects6.yml", a), ("contrast.yml", b)], "CRACK", "SCRATCH")
    assert rows[0]["CRACK → SCRATCH"] == "12" and rows[0]["Δ mAP@0.5"] == MISSING
    assert rows[1]["CRACK → SCRATCH"] == "9 (-3)" and rows[1]["SCRATCH → CRACK"] == "3 (0)"
    assert rows[1]["Δ mAP@0.5"] == "+0.050"
    assert rows[1]["AP@0.5 SCRATCH"] == MISSING


def test_per_class_rows_and_markdown_escaping():
    m = metrics({"CRACK": 0.5, "SCR|ATCH": None}, map50=0.5)
    rows = per_class_rows(m)
    assert rows[1]["AP@0.5"] == MISSING and rows[1]["F1"] == MISSING and rows[1]["GT"] == "0"
    assert rows[-1]["AP@0.5"] == "0.500"
    md = markdown_table(rows)
    assert "SCR\\|ATCH" in md
    lines = md.splitlines()
    assert len({len(re.split(r"(?<!\\)\|", line)) for line in lines}) == 1  # same number of cells per line
    assert markdown_table([{"a": None, "b": 0.25, "c": -0.5}]).splitlines()[-1] == "| – | 0.250 | -0.500 |"
