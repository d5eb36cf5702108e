"""Deletion / insertion curves: a stand-in detector with a known cause, the schedule, the blank, ties,
the IoU matching on a real tiny detector, and the summary's intervals and readings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defectfusion.config import ModelConfig
from defectfusion.engine.evaluation.bootstrap import image_draws
from defectfusion.engine.explain.faithfulness import (
    READINGS,
    box_blob_map,
    deletion_insertion,
    detection_scorer,
    fraction_schedule,
    pixel_order,
    score_curves,
    summarize_faithfulness,
)
from defectfusion.models.detector import build_detector

SIZE = 64
PATCH = 8


def _scene(seed: int, patch_at: tuple[int, int] | None = None, box: tuple[int, ...] | None = None):
    """A noisy grey image with a bright ``PATCH`` square and a detection box elsewhere, and the
    stand-in detector: one detection whose score is a sigmoid of the patch's mean intensity only."""
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.integers(80, 120, size=(3, SIZE, SIZE)).astype(np.uint8))
    while patch_at is None or box is None:  # random places that do not overlap
        py, px = (int(v) for v in rng.integers(0, SIZE - PATCH, 2))
        bx, by = (int(v) for v in rng.integers(0, SIZE - 16, 2))
        if px + PATCH <= bx or bx + 16 <= px or py + PATCH <= by or by + 16 <= py:
            patch_at, box = (py, px), (bx, by, bx + 16, by + 16)
    py, px = patch_at
    image[:, py : py + PATCH, px : px + PATCH] = 250
    truth = torch.zeros(SIZE, SIZE)
    truth[py : py + PATCH, px : px + PATCH] = 1.0
    in_box = torch.zeros(SIZE, SIZE)
    in_box[box[1] : box[3], box[0] : box[2]] = 1.0

    def scorer(images: torch.Tensor) -> torch.Tensor:
        mean = images[:, :, py : py + PATCH, px : px + PATCH].float().mean(dim=(1, 2, 3))
        return torch.sigmoid((mean - 175.0) / 15.0)[:, None]

    return image, torch.tensor([box], dtype=torch.float64), scorer, truth, in_box


def test_the_true_map_falls_faster_than_the_box_and_random_orders():
    """The patch's own map: lowest deletion AUC, highest insertion AUC. Checked to fail by reversing
    the true map (``1 - truth``: it then deletes the patch last and loses to both references)."""
    image, box, scorer, truth, in_box = _scene(0, patch_at=(48, 48), box=(4, 4, 20, 20))
    (result,) = score_curves(scorer, image, box, [{"truth": truth, "box_map": in_box}], steps=10)
    assert set(result.curves) == {"truth", "box_map", "boxes", "random"}
    c = result.curves
    assert result.score > 0.99 and float(c["truth"].deletion[-1]) < 0.05
    for reference in ("boxes", "random"):
        assert c["truth"].deletion_auc < c[reference].deletion_auc - 0.2
        assert c["truth"].insertion_auc > c[reference].insertion_auc + 0.2
    # the patch is 1.6 % of the pixels: gone by the 4 % step
    assert float(c["truth"].deletion[2]) < 0.05 and float(c["truth"].insertion[2]) > 0.99
    assert c["truth"].deletion_auc_normalised == pytest.approx(c["truth"].deletion_auc / result.score)


def test_a_map_of_the_box_region_does_no_better_than_the_boxes_control_and_the_truth_does():
    """Over 24 scenes with the patch and the box at random places: the box-region map's paired
    differences from ``boxes`` have intervals containing 0 (not better), its reading is not
    ``beyond-boxes``; the true map reads ``beyond-boxes``. Checked to fail by adding half the true
    map to the box map (it then knows where the patch is and reads ``beyond-boxes``)."""
    per_image = {}
    for seed in range(24):
        image, box, scorer, truth, in_box = _scene(100 + seed)
        per_image[seed] = score_curves(scorer, image, box, [{"truth": truth, "box_map": in_box}], seed=seed)
    summary = summarize_faithfulness(per_image, draws=500)
    kinds = summary.kinds
    assert kinds["truth"]["reading"] == "beyond-boxes"
    versus = kinds["box_map"]["versus"]["boxes"]
    assert versus["deletion_interval"][1] >= 0.0 and versus["insertion_interval"][0] <= 0.0
    assert kinds["box_map"]["reading"] != "beyond-boxes"
    assert kinds["boxes"]["reading"] == kinds["random"]["reading"] == "reference"


def test_the_schedule_is_squares_and_each_step_blanks_exactly_that_share_of_pixels():
    """Fractions (k/10)^2; with a scorer that reports the share of pixels changed, the deletion curve
    is round(f * N) / N and insertion its complement. Checked to fail with a linear schedule and with
    ``int(f * N)`` counts (two steps then differ by a pixel)."""
    torch.testing.assert_close(fraction_schedule(10), torch.tensor([k * k / 100 for k in range(11)]).double())
    assert len(fraction_schedule()) == 9 and float(fraction_schedule()[1]) == 1 / 64  # the default: 8 steps
    assert fraction_schedule(3).tolist() == pytest.approx([0, 1 / 9, 4 / 9, 1])
    with pytest.raises(ValueError, match="steps"):
        fraction_schedule(0)
    generator = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 15, 21), dtype=torch.uint8, generator=generator)
    median = image.reshape(3, -1).median(dim=1).values
    assert not (image == median[:, None, None]).all(0).any()  # no pixel already the blank colour

    def changed(images: torch.Tensor) -> torch.Tensor:
        return (images != image).any(1).float().mean(dim=(1, 2))[:, None]

    ramp = {"ramp": torch.rand(15, 21, generator=generator)}
    (result,) = score_curves(changed, image, [[2, 2, 9, 9]], [ramp], steps=10)
    pixels = 15 * 21
    expected = torch.tensor([round(k * k / 100 * pixels) / pixels for k in range(11)])
    for curves in result.curves.values():
        torch.testing.assert_close(curves.deletion, expected)
        torch.testing.assert_close(curves.insertion, 1 - expected)
        assert curves.deletion_auc == pytest.approx(float(torch.trapezoid(expected.double(), fraction_schedule(10))))
    (coarse,) = score_curves(changed, image, [[2, 2, 9, 9]], [ramp], steps=1)  # the ends only
    assert coarse.curves["ramp"].deletion.tolist() == [0.0, 1.0] and coarse.curves["ramp"].deletion_auc == 0.5


def test_the_blank_is_the_median_colour_and_the_top_ranked_pixels_go_first():
    """The fully deleted image is every pixel the per-channel median (an odd pixel count makes it
    unambiguous); the ramp map's deletion blanks exactly its top pixels, its reverse its bottom ones.
    Checked to fail by sorting ascending in ``pixel_order`` and by blanking with the mean colour."""
    generator = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 15, 21), dtype=torch.uint8, generator=generator)
    seen = []

    def recording(images: torch.Tensor) -> torch.Tensor:
        seen.extend(images)
        return torch.zeros(len(images), 1)

    score_curves(recording, image, [[0, 0, 5, 5]], [{}])
    blank = seen[1]  # the scorer sees the unmasked image, then the blank
    medians = np.median(image.reshape(3, -1).numpy(), axis=1)
    assert torch.equal(seen[0], image)
    assert (blank.reshape(3, -1).numpy() == medians[:, None]).all()

    ramp = torch.arange(15 * 21, dtype=torch.float32).reshape(15, 21)
    top = set(range(15 * 21 - 28, 15 * 21))  # the 9 % step blanks round(0.09 * 315) = 28 pixels

    def share_of_top_blanked(images: torch.Tensor) -> torch.Tensor:
        hit = (images != image).any(1).reshape(len(images), -1)[:, sorted(top)]
        return hit.float().mean(1)[:, None]

    maps = [{"ramp": ramp, "reverse": -ramp}]
    (result,) = score_curves(share_of_top_blanked, image, [[0, 0, 5, 5]], maps, steps=10)
    assert float(result.curves["ramp"].deletion[3]) == 1.0  # all 28 gone at the 9 % step
    assert float(result.curves["ramp"].deletion[1]) == pytest.approx(3 / 28)  # 1 %: the top 3 of them
    assert float(result.curves["reverse"].deletion[8]) == 0.0  # 64 %: still none of them
    assert pixel_order(ramp, torch.randperm(315))[:3].tolist() == [314, 313, 312]


def test_ties_follow_one_seeded_permutation_that_is_the_random_reference():
    """A constant map's curves equal ``random``'s exactly; the seed fixes them and another seed moves
    them. Checked to fail by drawing the random reference from a separate generator."""
    image, box, scorer, _, _ = _scene(5, patch_at=(30, 30), box=(2, 2, 18, 18))
    flat = {"flat": torch.ones(SIZE, SIZE)}
    (a,) = score_curves(scorer, image, box, [flat], seed=3)
    (b,) = score_curves(scorer, image, box, [flat], seed=3)
    (c,) = score_curves(scorer, image, box, [flat], seed=4)
    torch.testing.assert_close(a.curves["flat"].deletion, a.curves["random"].deletion)
    torch.testing.assert_close(a.curves["flat"].insertion, a.curves["random"].insertion)
    torch.testing.assert_close(a.curves["flat"].deletion, b.curves["flat"].deletion)
    assert not torch.equal(a.curves["flat"].deletion, c.curves["flat"].deletion)


def test_box_blob_map_is_a_weighted_gaussian_at_the_box_centre():
    """Peak = weight at the centre, exp(-1/2) of it a quarter box width away, blobs add up. Checked to
    fail with sd = half the width."""
    blob = box_blob_map(torch.tensor([[10.0, 20.0, 30.0, 28.0]]), torch.tensor([0.8]), (40, 50))
    assert blob.shape == (40, 50) and blob.dtype == torch.float32
    y, x = divmod(int(blob.argmax()), 50)
    assert (x + 0.5, y + 0.5) in {(19.5, 23.5), (20.5, 23.5), (19.5, 24.5), (20.5, 24.5)}
    centre = box_blob_map([[9.5, 19.5, 29.5, 27.5]], [0.8], (40, 50))  # centre on pixel (19, 23)
    assert float(centre[23, 19]) == pytest.approx(0.8)
    assert float(centre[23, 24]) == pytest.approx(0.8 * np.exp(-0.5), rel=1e-5)  # 5 px = width / 4
    assert float(centre[25, 19]) == pytest.approx(0.8 * np.exp(-0.5), rel=1e-5)  # 2 px = height / 4
    two = box_blob_map([[9.5, 19.5, 29.5, 27.5], [0, 0, 8, 8]], [0.8, 0.5], (40, 50))
    torch.testing.assert_close(two, centre + box_blob_map([[0, 0, 8, 8]], [0.5], (40, 50)))
    assert not box_blob_map(torch.zeros(0, 4), torch.zeros(0), (4, 5)).any()


@pytest.mark.parametrize("resize", ["plain", "letterbox"])
def test_a_detection_is_scored_by_the_best_query_of_its_class_overlapping_its_box(resize, synth_data, one_thread):
    """On a tiny random DEIMv2 (non-square image), the scorer's rule is recomputed from ``predict``
    (an independent path to every query's box and score): the max score of the class over queries
    with IoU >= 0.5, 0 when none. Checked to fail by mapping letterbox boxes as for the plain resize
    (the canvas), and by taking IoU > 0.9."""
    from torchvision.ops import box_iou

    from defectfusion.data.images import load_image

    torch.manual_seed(0)
    model = build_detector(ModelConfig(preset="dinov3_micro", image_size=(64, 64)), [f"c{i}" for i in range(6)])
    model.set_image_size(None, resize)
    model.eval()
    path = next((synth_data / "val" / "images").iterdir())
    image = load_image(path).as_subclass(torch.Tensor)[:, 8:56, :].contiguous()  # 48 x 96
    (every,) = model.predict([image], threshold=0.0, top_k=10_000)
    area = (every.boxes[:, 2:] - every.boxes[:, :2]).clamp(min=0).prod(1)
    order = torch.argsort(every.scores, descending=True)
    order = order[area[order] > 0]  # boxes wholly in the padding, clipped to a line, match nothing
    picks = [int(i) for i in order[:4]] + [int(order[len(order) // 2])]
    x1, y1, x2, y2 = every.boxes[picks[0]].tolist()
    narrower = [x1, y1, x1 + 0.7 * (x2 - x1), y2]  # IoU 0.7 with the best detection's box
    boxes = torch.cat([every.boxes[picks], torch.tensor([narrower, [0.0, 0.0, 1.0, 1.0]])])
    labels = [int(every.labels[i]) for i in picks] + [int(every.labels[picks[0]]), 0]
    scores = detection_scorer(model, image.shape[-2:], boxes, labels)(image[None])[0]
    overlap = box_iou(every.boxes.float(), boxes.float())  # [all, n]
    for j, label in enumerate(labels):
        match = (overlap[:, j] >= 0.5) & (every.labels == label)
        expected = float(every.scores[match].max()) if match.any() else 0.0
        assert float(scores[j]) == pytest.approx(expected, abs=1e-5)
    assert all(float(scores[j]) >= float(every.scores[i]) - 1e-5 for j, i in enumerate(picks))
    assert float(scores[-2]) >= float(every.scores[picks[0]]) - 1e-5  # matched by the detection at IoU 0.7
    assert float(scores[-1]) == 0.0  # a 1-pixel box no query overlaps

    # the whole path: endpoints are the unmasked and the blank image's scores
    maps = [{"noise": torch.rand(48, 96)} for _ in picks[:2]]
    results = deletion_insertion(model, image, [(boxes[j].tolist(), labels[j]) for j in range(2)], maps, steps=3)
    blank = image.reshape(3, -1).median(dim=1).values[:, None, None].expand_as(image).contiguous()
    on_blank = detection_scorer(model, image.shape[-2:], boxes[:2], labels[:2])(blank[None])[0]
    for j, result in enumerate(results):
        for curves in result.curves.values():
            assert len(curves.deletion) == 4
            assert float(curves.deletion[0]) == float(curves.insertion[-1]) == pytest.approx(float(scores[j]))
            assert float(curves.deletion[-1]) == float(curves.insertion[0]) == pytest.approx(float(on_blank[j]))


def test_the_summary_resamples_images_and_its_intervals_contain_their_means():
    """Intervals equal a by-hand bootstrap over images (an image's detections drawn together; image 10
    holds three), means lie inside them, a difference from oneself is absent, readings are known
    words, one image leaves the reading undetermined. Checked to fail by resampling detections
    instead of images, and by pairing each detection with another's reference."""
    per_image = {}
    for seed in range(8):
        image, box, scorer, truth, in_box = _scene(200 + seed)
        found = score_curves(scorer, image, box, [{"truth": truth, "box_map": in_box}], steps=5)
        per_image.setdefault(10 + max(0, seed - 2), []).extend(found)  # seeds 0-2 all in image 10
    summary = summarize_faithfulness(per_image, draws=300, seed=7)
    assert summary.images == 6 and summary.detections == 8 and len(summary.fractions) == 6

    by_hand = []
    for draw in image_draws(sorted(per_image), 300, 7):
        drawn = [d for i in draw for d in per_image[int(i)]]
        by_hand.append(np.mean([d.curves["truth"].deletion_auc - d.curves["boxes"].deletion_auc for d in drawn]))
    expected = np.percentile(by_hand, [2.5, 97.5])
    assert summary.kinds["truth"]["versus"]["boxes"]["deletion_interval"] == pytest.approx(expected)

    for kind, entry in summary.kinds.items():
        for curve in ("deletion", "insertion"):
            low, high = entry[f"{curve}_auc_interval"]
            assert low <= entry[f"{curve}_auc"] <= high
            for ref, diff in entry["versus"].items():
                assert ref != kind
                low, high = diff[f"{curve}_interval"]
                assert low <= diff[curve] <= high
        assert entry["reading"] in READINGS and entry["meaning"] == READINGS[entry["reading"]]
    data = json.loads(json.dumps(summary.to_dict()))
    assert set(data) == {"images", "detections", "draws", "fractions", "rule", "kinds"}
    assert set(data["kinds"]) == {"truth", "box_map", "boxes", "random"}
    single = summarize_faithfulness({1: per_image[10]})
    assert single.kinds["truth"]["reading"] == "undetermined" and single.kinds["truth"]["deletion_auc_interval"] is None


def test_maps_of_the_wrong_size_are_refused():
    image, box, scorer, truth, _ = _scene(0, patch_at=(40, 40), box=(0, 0, 16, 16))
    with pytest.raises(ValueError, match="'truth' map is \\[32, 32\\]"):
        score_curves(scorer, image, box, [{"truth": truth[:32, :32]}])
    with pytest.raises(ValueError, match="uint8"):
        score_curves(scorer, image.float(), box, [{"truth": truth}])
