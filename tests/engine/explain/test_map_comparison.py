"""Each map kind against a control that knows only the detections, against the wrong class, and on the
pairs the detector got wrong: the readings follow from paired differences with intervals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from defectfusion.engine.explain.map_comparison import (
    ADDS,
    ANY_CLASS,
    BELOW,
    CLASS_SPECIFIC,
    IS_CONTROL,
    RESTATES,
    class_specificity,
    compare_kinds,
    control_reading,
    paired_difference,
    specificity_reading,
)
from defectfusion.engine.explain.map_quality import (
    CONTROL_KIND,
    PairQuality,
    best_box_on_object,
    explanation_pairs,
    image_pairs,
    summarize_quality,
    wrong_detection_pointing_game,
)

SIZE = (60, 80)
TOP, BOTTOM = np.array([10.0, 5.0, 30.0, 25.0]), np.array([45.0, 35.0, 70.0, 55.0])  # far apart (xyxy)


def _filled(boxes, size=SIZE) -> torch.Tensor:
    m = torch.zeros(size)
    for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4):
        m[int(y1) : int(y2), int(x1) : int(x2)] = 1.0
    return m


def _two_class_image(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes 0 and 1, one box each; which one is on top alternates with the image."""
    boxes = np.stack([TOP, BOTTOM]) if i % 2 == 0 else np.stack([BOTTOM, TOP])
    return boxes, np.array([0, 1])


def _pairs(maps_of, images: int, **kwargs) -> tuple[dict, dict]:
    """Right- and wrong-class pairs per kind over ``images`` two-class images; ``maps_of(i, boxes, labels)``."""
    right, wrong = {}, {}
    for i in range(images):
        boxes, labels = _two_class_image(i)
        got = image_pairs(maps_of(i, boxes, labels), i, boxes, labels, border=0, **kwargs)
        for kind in got.right:
            right.setdefault(kind, []).extend(got.right[kind])
            wrong.setdefault(kind, []).extend(got.wrong[kind])
    return right, wrong


def test_a_map_equal_to_the_control_restates_the_detections_and_a_better_one_adds():
    """``same`` is the control itself: every paired difference is 0, so its interval holds 0. ``better``
    hits every pair while the control misses on every third image: the difference's interval lies above 0.
    ``worse`` always peaks off the objects. Fails if the difference were taken control minus kind (better
    would read below), if pairs were not matched by (image, class), or if a zero difference read as above."""

    def maps_of(i, boxes, labels):
        own = torch.stack([_filled(boxes[labels == c]) for c in range(2)])
        control = torch.zeros_like(own) if i % 3 == 0 else own  # the detector missed image 0, 3, 6, ...
        away = torch.zeros_like(own)
        away[:, 57, 2] = 1.0  # bottom-left corner: no object there
        return {CONTROL_KIND: control, "same": control.clone(), "better": own, "worse": away}

    right, wrong = _pairs(maps_of, 12)
    comparisons = compare_kinds(right, wrong, draws=300)
    assert comparisons["same"].control_reading == RESTATES
    assert all(d.mean == 0.0 and d.direction == "within" for d in comparisons["same"].vs_control.values())
    better = comparisons["better"].vs_control["pointing_game"]
    assert better.mean == pytest.approx(4 / 12) and better.interval[0] > 0 and better.pairs == 24
    assert comparisons["better"].control_reading == ADDS
    assert comparisons["worse"].control_reading == BELOW
    assert comparisons[CONTROL_KIND].control_reading == IS_CONTROL
    without = compare_kinds({"better": right["better"]}, draws=100)["better"]
    assert without.vs_control == {} and "no detections-only control" in without.control_reading


def test_a_map_that_lights_every_object_is_not_class_specific_and_a_per_class_map_is():
    """``any`` gives every class the same map, high on all objects; its maximum falls on the top box,
    whichever class that is. ``own`` is high on the class's own boxes only. Fails if right and wrong
    classes were swapped (``own`` would read as higher on the other classes), if the wrong-class pairs
    were scored against the class's own boxes (``any`` would look class-specific), or if an image's
    single class produced a wrong-class pair."""

    def maps_of(i, boxes, labels):
        everything = _filled(boxes)
        return {
            "any": torch.stack([everything, everything]),
            "own": torch.stack([_filled(boxes[labels == c]) for c in range(2)]),
        }

    right, wrong = _pairs(maps_of, 10)
    assert {(p.label, p.against) for p in wrong["own"]} == {(0, 1), (1, 0)}
    assert all(not p.hit for p in wrong["own"]) and all(p.hit for p in right["own"])
    specific = class_specificity(right["own"], wrong["own"], draws=200)
    assert specific["pointing_game"].mean == 1.0 and specific["auroc"].mean == pytest.approx(0.5)
    assert specificity_reading(specific) == CLASS_SPECIFIC
    anyclass = class_specificity(right["any"], wrong["any"], draws=200)
    assert anyclass["pointing_game"].mean == 0.0 and anyclass["auroc"].mean == pytest.approx(0.0)
    assert specificity_reading(anyclass) == ANY_CLASS
    swapped = class_specificity(wrong["own"], [replace(p, against=1 - p.label) for p in right["own"]], draws=200)
    assert specificity_reading(swapped) != CLASS_SPECIFIC
    single = image_pairs({"own": torch.zeros(2, *SIZE)}, 0, TOP[None], np.array([0]), border=0)
    assert single.wrong["own"] == [] and len(single.right["own"]) == 1


def test_best_box_on_object_takes_the_best_scoring_box_of_each_class_at_iou_one_half():
    """Fails if any box of the class counted (not the best), if another class's detections counted, if a
    missing class read as right, or if the IoU were computed against another class's boxes."""
    gt, gt_labels = np.stack([TOP, BOTTOM]), np.array([0, 1])
    half = np.array([10.0, 5.0, 40.0, 25.0])  # TOP widened by half its width: IoU 20x20 / 30x20 = 0.67
    far = np.array([50.0, 0.0, 60.0, 10.0])
    right = best_box_on_object(np.stack([half, far]), np.array([0.9, 0.5]), np.array([0, 0]), gt, gt_labels)
    assert right == {0: True, 1: False}  # class 1 has no detection: wrong
    wrong = best_box_on_object(np.stack([half, far]), np.array([0.5, 0.9]), np.array([0, 0]), gt, gt_labels)
    assert wrong[0] is False  # the far box scores higher
    on_other = best_box_on_object(BOTTOM[None], np.array([0.9]), np.array([0]), gt, gt_labels)
    assert on_other[0] is False  # on an object, but of the other class
    other_label = best_box_on_object(np.stack([TOP, far]), np.array([0.9, 0.5]), np.array([1, 0]), gt, gt_labels)
    assert other_label[0] is False  # the box on class 0's object is a class-1 detection
    quarter = np.array([10.0, 5.0, 50.0, 25.0])  # IoU 400 / 800 = 0.5 exactly: counts
    assert best_box_on_object(torch.tensor(quarter[None]), torch.tensor([1.0]), torch.tensor([0]), gt, gt_labels)[0]


def test_a_map_that_copies_the_detection_scores_zero_where_the_detection_is_wrong():
    """On every third image the detector's best class-0 box is far from the class-0 object. ``copy`` is
    high on the detected box, ``truth`` on the object. Fails if the wrong-detection pointing game were
    taken over all pairs (copy would score 2/3), if ``detected`` were not kept on the pairs, or if right
    detections were counted as wrong."""
    far = np.array([45.0, 35.0, 70.0, 55.0])
    right, detected_wrong = [], {}
    for i in range(9):
        detection = far if i % 3 == 0 else TOP
        on_object = best_box_on_object(detection[None], np.array([0.8]), np.array([0]), TOP[None], np.array([0]))
        maps = {
            "copy": torch.stack([_filled(detection), torch.zeros(SIZE)]),
            "truth": torch.stack([_filled(TOP), torch.zeros(SIZE)]),
        }
        got = explanation_pairs(maps, i, TOP[None], np.array([0]), border=0, detected=on_object)
        right.append(got)
        detected_wrong[i] = not on_object[0]
    assert sum(detected_wrong.values()) == 3
    copy = summarize_quality("copy", [p for g in right for p in g["copy"]], ["a", "b"], draws=50)
    assert copy.overall["pointing_game"] == pytest.approx(6 / 9)
    assert copy.overall["wrong_detection_pairs"] == 3 and copy.overall["wrong_detection_pointing_game"] == 0.0
    truth = summarize_quality("truth", [p for g in right for p in g["truth"]], ["a", "b"], draws=50)
    assert truth.overall["wrong_detection_pointing_game"] == 1.0
    comparisons = compare_kinds({k: [p for g in right for p in g[k]] for k in ("copy", "truth")}, control="copy")
    assert comparisons["truth"].wrong_detections == {"pairs": 3, "pointing_game": 1.0, "control_pointing_game": 0.0}
    untold = summarize_quality("k", explanation_pairs(maps, 0, TOP[None], np.array([0]), border=0)["truth"], ["a"])
    assert untold.overall["wrong_detection_pairs"] is None and untold.overall["wrong_detection_pointing_game"] is None
    all_right = wrong_detection_pointing_game([replace(p, detected=True) for g in right for p in g["copy"]])
    assert all_right == (None, 0)


def test_intervals_contain_their_means_on_noisy_maps():
    """Random maps and a random control over 25 images: every paired difference's interval holds its mean
    and lies within the possible range. Fails if the resampling drew pairs instead of images with a
    different estimator, or if the interval came from another metric's values."""
    rng = np.random.default_rng(3)

    def maps_of(i, boxes, labels):
        noise = torch.from_numpy(rng.random((3, 2, *SIZE))).float()
        return {CONTROL_KIND: noise[0] + _filled(boxes) * 0.3, "a": noise[1] + _filled(boxes) * 0.6, "b": noise[2]}

    right, wrong = _pairs(maps_of, 25)
    for comparison in compare_kinds(right, wrong, draws=400).values():
        for d in [*comparison.vs_control.values(), *comparison.right_vs_wrong.values()]:
            low, high = d.interval
            assert low - 1e-12 <= d.mean <= high + 1e-12 and -1.0 <= low <= high <= 1.0
    for kind, pairs in right.items():
        o = summarize_quality(kind, pairs + wrong[kind], ["x", "y"], draws=400).overall
        assert o["pairs"] == 50  # the wrong-class pairs are left out of the summary
        for key in ("pointing_game", "auroc"):
            assert o[f"{key}_interval"][0] <= o[key] <= o[f"{key}_interval"][1]


def test_paired_differences_use_only_the_pairs_both_sides_have():
    a = [PairQuality(1, 0, True, 0.1, 0.9), PairQuality(2, 0, True, 0.1, 0.8), PairQuality(3, 0, True, 0.1, None)]
    b = [PairQuality(1, 0, False, 0.1, 0.5), PairQuality(2, 0, True, 0.1, 0.6)]
    pg, auc = paired_difference(a, b, "pointing_game", draws=0), paired_difference(a, b, "auroc")
    assert (pg.mean, pg.pairs, pg.interval) == (0.5, 2, None)
    assert auc.mean == pytest.approx(0.3) and auc.pairs == 2 and auc.interval is not None
    assert pg.direction is None  # no interval, no reading
    assert control_reading({"pointing_game": pg}).startswith("not compared")
    with pytest.raises(ValueError, match="metric must be one of"):
        paired_difference(a, b, "iou")
