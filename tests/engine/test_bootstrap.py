"""The paired bootstrap scores every resample by the evaluator's own rules."""

import numpy as np
import pytest
import torch

from defectfusion.engine.bootstrap import image_draws, resample
from defectfusion.engine.evaluator import DetectionEvaluator
from defectfusion.engine.intervals import difference_interval, percentile_interval
from defectfusion.structures import Detections
from tests.helpers import random_coco_case, results_as_detections


def _gt(n):
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(1, n + 1)]
    anns = [
        {"id": i, "image_id": i, "category_id": 7, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0}
        for i in range(1, n + 1)
    ]
    return {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "crack"}]}


def _det(hit: bool):
    box = [10.0, 10.0, 40.0, 40.0] if hit else [60.0, 60.0, 90.0, 90.0]
    return Detections(torch.tensor([box]), torch.tensor([0.9]), torch.tensor([0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_identity_resample_of_a_multi_class_case_equals_the_evaluator(seed):
    gt, results = random_coco_case(seed)
    detections = {i: results_as_detections(results, i) for i in range(1, 11)}
    ev = DetectionEvaluator(gt)
    ev.process(list(detections), list(detections.values()))
    expected = ev.evaluate(all_images=True)
    identity = np.array([sorted(img["id"] for img in gt["images"])])
    got = resample(gt, {"model": detections}, identity)["model"]
    assert got.map50[0] == pytest.approx(expected["map50"], abs=1e-12)
    assert got.map[0] == pytest.approx(expected["map"], abs=1e-12)
    for k, name in enumerate(expected["per_class"]):
        want = expected["per_class"][name]["ap50"]
        assert (np.isnan(got.ap50[0, k]) and want is None) or got.ap50[0, k] == pytest.approx(want, abs=1e-12)
    assert got.confusion[0].tolist() == expected["confusion_matrix"]["counts"]


def test_a_perfect_model_beats_a_blind_one_with_an_interval_excluding_zero():
    gt = _gt(20)
    perfect = {i: _det(True) for i in range(1, 21)}
    blind = {i: _det(False) for i in range(1, 21)}
    samples = resample(gt, {"perfect": perfect, "blind": blind}, image_draws(range(1, 21), 30, seed=0))
    assert np.allclose(samples["perfect"].map50, 1.0) and np.allclose(samples["blind"].map50, 0.0)
    interval = difference_interval(samples, "perfect", "blind", observed=1.0)
    assert interval.low == interval.high == 1.0 and interval.excludes_zero


def test_two_equal_models_give_an_interval_around_zero_and_resamples_are_paired():
    gt = _gt(30)
    half = {i: _det(i % 2 == 0) for i in range(1, 31)}
    samples = resample(gt, {"a": half, "b": dict(half)}, image_draws(range(1, 31), 40, seed=1))
    assert np.array_equal(samples["a"].map50, samples["b"].map50)  # same images in every draw
    assert samples["a"].map50.std() > 0  # but the draws differ from each other
    interval = difference_interval(samples, "a", "b", observed=0.0)
    assert interval.low == interval.high == 0.0 and not interval.excludes_zero


def test_a_known_difference_falls_inside_its_interval():
    # a hits 80 % of the objects, b 60 %: on 60 images the interval of the difference must hold 0.2
    gt = _gt(60)
    a = {i: _det(i % 5 != 0) for i in range(1, 61)}
    b = {i: _det(i % 5 not in (0, 1)) for i in range(1, 61)}
    samples = resample(gt, {"a": a, "b": b}, image_draws(range(1, 61), 200, seed=3))
    observed = float(np.median(samples["a"].map50 - samples["b"].map50))
    interval = percentile_interval(samples["a"].map50 - samples["b"].map50, "a", "b", observed)
    assert interval.low < 0.2 < interval.high and interval.excludes_zero


def test_coco_keeps_100_detections_per_image_and_class_not_per_image():
    gt = _gt(10)
    gt["categories"].append({"id": 8, "name": "scratch"})
    misses = torch.tensor([[60.0, 60.0, 90.0, 90.0]]).repeat(149, 1)

    def crowded() -> Detections:
        # 149 confident detections of the *other* class first, then the hit: per image it ranks
        # 150th, per class it is the first crack
        boxes = torch.cat([misses, torch.tensor([[10.0, 10.0, 40.0, 40.0]])])
        scores = torch.cat([torch.linspace(0.9, 0.5, 149), torch.tensor([0.1])])
        labels = torch.cat([torch.ones(149, dtype=torch.long), torch.zeros(1, dtype=torch.long)])
        return Detections(boxes, scores, labels)

    samples = resample(gt, {"m": {i: crowded() for i in range(1, 11)}}, image_draws(range(1, 11), 5, seed=0))
    assert np.allclose(samples["m"].ap50[:, 0], 1.0)  # the crack class keeps its hit
