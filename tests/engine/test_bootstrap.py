import numpy as np
import torch

from defectfusion.engine.bootstrap import bootstrap_map50, difference_interval
from defectfusion.structures import Detections


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


def test_a_perfect_model_beats_a_blind_one_with_an_interval_excluding_zero():
    gt = _gt(20)
    perfect = {i: _det(True) for i in range(1, 21)}
    blind = {i: _det(False) for i in range(1, 21)}
    samples = bootstrap_map50(gt, {"perfect": perfect, "blind": blind}, draws=30, seed=0)
    assert np.allclose(samples["perfect"], 1.0) and np.allclose(samples["blind"], 0.0)
    interval = difference_interval(samples, "perfect", "blind", observed=1.0)
    assert interval.low == interval.high == 1.0 and interval.excludes_zero


def test_two_equal_models_give_an_interval_around_zero_and_resamples_are_paired():
    gt = _gt(30)
    half = {i: _det(i % 2 == 0) for i in range(1, 31)}
    samples = bootstrap_map50(gt, {"a": half, "b": dict(half)}, draws=40, seed=1)
    assert np.array_equal(samples["a"], samples["b"])  # same images in every draw
    assert samples["a"].std() > 0  # but the draws differ from each other
    interval = difference_interval(samples, "a", "b", observed=0.0)
    assert interval.low == interval.high == 0.0 and not interval.excludes_zero
    assert 0.0 < float(np.median(samples["a"])) < 1.0


def test_only_each_images_best_100_detections_count_as_in_coco():
    gt = _gt(10)
    misses = torch.tensor([[60.0, 60.0, 90.0, 90.0]]).repeat(149, 1)

    def crowded(hit_score: float) -> Detections:
        boxes = torch.cat([torch.tensor([[10.0, 10.0, 40.0, 40.0]]), misses])
        scores = torch.cat([torch.tensor([hit_score]), torch.linspace(0.8, 0.5, 149)])
        return Detections(boxes, scores, torch.zeros(150, dtype=torch.long))

    samples = bootstrap_map50(
        gt,
        {"hit_first": {i: crowded(0.9) for i in range(1, 11)}, "hit_last": {i: crowded(0.1) for i in range(1, 11)}},
        draws=5,
        seed=0,
    )
    assert np.all(samples["hit_first"] > 0.99)
    assert np.allclose(samples["hit_last"], 0.0)  # ranked 150th: past COCO's 100 per image
