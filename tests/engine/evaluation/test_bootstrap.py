"""The paired bootstrap scores every resample by the evaluator's own rules (COCO's), exactly."""

import contextlib
import io

import numpy as np
import pytest
import torch

from defectfusion.engine.evaluation.bootstrap import count_weights, image_draws, resample, resample_counts
from defectfusion.engine.evaluation.evaluator import DetectionEvaluator
from defectfusion.engine.study.intervals import ArmValues, compare
from defectfusion.structures import Detections
from tests.helpers import busy_coco_case, coco_on_resample, results_as_detections


def _models_interval(samples, a, b):
    """The study's interval of two given models' mAP@0.5 (images resampled, no seeds), identity draw observed."""
    observed = lambda name: np.array([samples[name].map50[0]])  # noqa: E731
    return compare(
        ArmValues(a, observed(a), samples[a].map50[None], fixed=True),
        ArmValues(b, observed(b), samples[b].map50[None], fixed=True),
        None,
    )


IDS = list(range(1, 11))


def _gt(n):
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(1, n + 1)]
    anns = [
        {"id": i, "image_id": i, "category_id": 7, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0}
        for i in range(1, n + 1)
    ]
    return {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "crack"}]}


def _det(hit: bool, score: float = 0.9):
    box = [10.0, 10.0, 40.0, 40.0] if hit else [60.0, 60.0, 90.0, 90.0]
    return Detections(torch.tensor([box]), torch.tensor([score]), torch.tensor([0]))


def _same(got: float, want: float | None) -> bool:
    return bool(np.isnan(got)) if want is None else got == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_identity_draw_equals_the_evaluator(seed, ties):
    gt, results = busy_coco_case(seed, ties)
    # what makes the case hard: >100 detections of a class in one image, ties across images
    assert sum(r["image_id"] == 2 and r["category_id"] == 5 for r in results) > 100
    scores = [(r["score"], r["image_id"]) for r in results]
    assert ties == (len({s for s, _ in scores}) < len({(s, i) for s, i in scores}))
    detections = {i: results_as_detections(results, i) for i in IDS[:-1]}  # image 10: no entry
    ev = DetectionEvaluator(gt)
    ev.process(list(detections), list(detections.values()))
    expected = ev.evaluate(all_images=True)
    got = resample(gt, {"model": detections}, np.array([IDS]))["model"]
    assert _same(got.map50[0], expected.map50) and _same(got.map[0], expected.map)
    for k, stats in enumerate(expected.per_class.values()):
        assert _same(got.ap50[0, k], stats.ap50) and _same(got.ap[0, k], stats.ap), k
    assert np.isnan(got.ap50[0, 3])  # class ABSENT has no ground truth
    assert got.confusion[0].tolist() == expected.confusion_matrix["counts"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_draw_equals_coco_on_the_explicitly_resampled_dataset(seed):
    gt, results = busy_coco_case(seed)  # no ties: COCO orders tied scores by draw position
    detections = {i: results_as_detections(results, i) for i in IDS}
    draws = image_draws(IDS, 6, seed=seed)
    assert max(np.bincount(row).max() for row in draws) > 1  # images drawn more than once
    got = resample(gt, {"model": detections}, draws)["model"]
    checked = 0
    for d, ids in enumerate(draws):
        ap50, ap = coco_on_resample(gt, detections, ids)
        for k in range(len(ap50)):
            assert _same(got.ap50[d, k], ap50[k]) and _same(got.ap[d, k], ap[k]), (d, k)
            checked += ap50[k] is not None
        defined = [v for v in ap50 if v is not None]
        assert got.map50[d] == pytest.approx(np.mean(defined), abs=1e-9)
    assert checked > 2 * len(draws)  # most classes are defined in most draws


def test_counts_and_draws_agree_and_a_draws_order_does_not_matter():
    gt, results = busy_coco_case(4)
    detections = {i: results_as_detections(results, i) for i in IDS}
    draws = image_draws(IDS, 5, seed=7)
    counts = count_weights(draws, IDS)
    assert counts.shape == (5, 10) and (counts.sum(axis=1) == 10).all()
    by_draws = resample(gt, {"m": detections}, draws)["m"]
    by_counts = resample_counts(gt, {"m": detections}, counts)["m"]
    shuffled = resample(gt, {"m": detections}, draws[:, ::-1])["m"]
    for other in (by_counts, shuffled):
        assert np.array_equal(by_draws.ap, other.ap, equal_nan=True)
        assert np.array_equal(by_draws.confusion, other.confusion)
    with pytest.raises(ValueError, match="image id 99"):
        resample(gt, {"m": detections}, np.array([[1, 99]]))


def test_a_perfect_model_beats_a_blind_one_with_an_interval_excluding_zero():
    gt = _gt(20)
    perfect = {i: _det(True) for i in range(1, 21)}
    blind = {i: _det(False) for i in range(1, 21)}
    samples = resample(gt, {"perfect": perfect, "blind": blind}, image_draws(range(1, 21), 30, seed=0))
    assert np.allclose(samples["perfect"].map50, 1.0) and np.allclose(samples["blind"].map50, 0.0)
    interval = _models_interval(samples, "perfect", "blind")
    assert interval.low == interval.high == 1.0 and interval.excludes_zero


def test_two_equal_models_give_an_interval_around_zero_and_resamples_are_paired():
    gt = _gt(30)
    half = {i: _det(i % 2 == 0) for i in range(1, 31)}
    samples = resample(gt, {"a": half, "b": dict(half)}, image_draws(range(1, 31), 40, seed=1))
    assert np.array_equal(samples["a"].map50, samples["b"].map50)  # same images in every draw
    assert samples["a"].map50.std() > 0  # but the draws differ from each other
    interval = _models_interval(samples, "a", "b")
    assert interval.low == interval.high == 0.0 and not interval.excludes_zero


def _pycocotools_ap(gt: dict, detections: dict[int, Detections]) -> tuple[list, list]:
    """Per-class AP@0.5 and AP@0.5:0.95 (``None``: undefined) by pycocotools itself."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = DetectionEvaluator(gt).dataset  # with the areas and crowd flags COCO needs
    cat_ids = [c["id"] for c in dataset["categories"]]
    results = [
        {"image_id": i, "category_id": cat_ids[lab], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
        for i, det in detections.items()
        for b, s, lab in zip(
            det.boxes.double().tolist(), det.scores.double().tolist(), det.labels.tolist(), strict=True
        )
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
    ap50, ap = [], []
    for cid in cat_ids:
        p = ev.eval["precision"][:, :, ev.params.catIds.index(cid), 0, -1]  # [T, R], area all, 100 dets
        ap50.append(float(p[0][p[0] > -1].mean()) if (p[0] > -1).any() else None)
        ap.append(float(p[p > -1].mean()) if (p > -1).any() else None)
    return ap50, ap


@pytest.mark.parametrize("ties", [False, True])
def test_the_identity_draw_equals_pycocotools(ties):
    gt, results = busy_coco_case(5, ties)
    detections = {i: results_as_detections(results, i) for i in IDS}
    ap50, ap = _pycocotools_ap(gt, detections)
    got = resample(gt, {"model": detections}, np.array([IDS]))["model"]
    for k in range(len(ap50)):
        assert _same(got.ap50[0, k], ap50[k]) and _same(got.ap[0, k], ap[k]), k


def test_a_known_difference_falls_inside_its_interval():
    # a finds 80 % of the objects, b 60 %, each with its own score order: the AP@0.5 difference
    # (pycocotools on the full set) is not the recall difference of 0.2
    gt = _gt(60)
    rng = np.random.default_rng(5)
    a = {i: _det(i % 5 != 0, float(rng.uniform(0.1, 1))) for i in range(1, 61)}
    b = {i: _det(i % 5 not in (0, 1), float(rng.uniform(0.1, 1))) for i in range(1, 61)}
    known = _pycocotools_ap(gt, a)[0][0] - _pycocotools_ap(gt, b)[0][0]
    assert abs(known - 0.2) > 0.02
    draws = np.concatenate([[np.arange(1, 61)], image_draws(range(1, 61), 1000, seed=3)])
    samples = resample(gt, {"a": a, "b": b}, draws)
    diff = samples["a"].map50 - samples["b"].map50
    assert diff[0] == pytest.approx(known, abs=1e-9)  # the identity draw is pycocotools' number
    interval = compare(
        ArmValues("a", np.array([known]), samples["a"].map50[None, 1:], fixed=True),
        ArmValues("b", np.array([0.0]), samples["b"].map50[None, 1:], fixed=True),
        None,
    )
    assert interval.low < known < interval.high and interval.excludes_zero


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
