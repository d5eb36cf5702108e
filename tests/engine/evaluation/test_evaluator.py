"""DetectionEvaluator against pycocotools, hand-made confusion cases, undefined metrics."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defectfusion.engine.evaluation.evaluator import DetectionEvaluator, write_metrics
from defectfusion.errors import ConfigError, DataError, DefectFusionError
from defectfusion.report.compare import pair_counts
from defectfusion.structures import ClassMetrics, Detections, Metrics
from tests.helpers import CATS, coco_case, random_coco_case, results_as_detections


def _pycocotools(gt: dict, results: list[dict], cat_ids: list[int] | None = None) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools(seed: int) -> None:
    gt, results = random_coco_case(seed)
    ev = DetectionEvaluator(gt)
    ids = list(range(1, 11))
    for i in range(0, 10, 3):  # batches of varying size
        ev.process(ids[i : i + 3], [results_as_detections(results, j) for j in ids[i : i + 3]])
    m = ev.evaluate()
    ref = _pycocotools(gt, results)
    assert m.map == pytest.approx(ref[0], abs=1e-4)
    assert m.map50 == pytest.approx(ref[1], abs=1e-4)
    assert 0.1 < m.map < m.map50 < 0.95  # a case that actually tests something
    for c in CATS[:3]:
        one = _pycocotools(gt, results, [c["id"]])
        assert m.per_class[c["name"]].ap == pytest.approx(one[0], abs=1e-4)
        assert m.per_class[c["name"]].ap50 == pytest.approx(one[1], abs=1e-4)
    absent = m.per_class["ABSENT"]
    assert absent.ap50 is None and absent.ap is None and absent.num_gt == 0
    assert absent.num_pred > 0 and absent.precision == 0.0 and absent.recall is None
    assert m.num_images == 10 and m.num_detections == len(results)
    assert m.num_ground_truth == sum(1 for a in gt["annotations"] if not a["iscrowd"])
    curve = m.pr_curves["ROTURA"]
    assert len(curve["recall"]) == len(curve["precision"]) == 101
    assert m.pr_curves["ABSENT"]["precision"] == [None] * 101
    json.dumps(m.to_dict(), allow_nan=False)


# Hand-made confusion cases, classes NORMAL=0 ROTURA=1 RAYONES=2 ABSENT=3, background=4.
def _box(x: float, y: float, s: float = 20) -> list[float]:
    return [x, y, s, s]


def _xyxy(*boxes: list[float]) -> torch.Tensor:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)


def _confusion_case() -> tuple[DetectionEvaluator, dict]:
    gt = coco_case(7, [
        {"image_id": 1, "category_id": 2, "bbox": _box(10, 10)},    # correct crack
        {"image_id": 2, "category_id": 2, "bbox": _box(10, 10)},    # crack called scratch
        {"image_id": 3, "category_id": 7, "bbox": _box(10, 10)},    # missed NORMAL
        {"image_id": 5, "category_id": 5, "bbox": _box(10, 10)},    # scratch predicted twice
        {"image_id": 7, "category_id": 5, "bbox": [100, 100, 80, 80], "iscrowd": 1},
    ])  # fmt: skip
    ev = DetectionEvaluator(gt)
    ev.process([1, 2, 3, 4], [
        Detections(_xyxy(_box(11, 10)), torch.tensor([0.9]), torch.tensor([1])),
        Detections(_xyxy(_box(10, 11)), torch.tensor([0.8]), torch.tensor([2])),
        Detections.empty(),
        Detections(_xyxy(_box(50, 50)), torch.tensor([0.7]), torch.tensor([2])),  # FP on an empty image
    ])  # fmt: skip
    ev.process([5, 6, 7], [
        Detections(_xyxy(_box(10, 10), _box(12, 10)), torch.tensor([0.6, 0.95]), torch.tensor([2, 2])),
        Detections(_xyxy(_box(50, 50)), torch.tensor([0.1]), torch.tensor([0])),  # below conf_threshold
        Detections(_xyxy(_box(110, 110)), torch.tensor([0.9]), torch.tensor([2])),  # on a crowd region
    ])  # fmt: skip
    return ev, ev.evaluate()


def test_confusion_matrix_hand_cases() -> None:
    _, m = _confusion_case()
    cm = m.confusion_matrix
    assert cm["labels"] == ["NORMAL", "ROTURA", "RAYONES", "ABSENT", "background"]
    assert cm["counts"] == [
        [0, 0, 0, 0, 1],  # NORMAL missed
        [0, 1, 1, 0, 0],  # one crack right, one called scratch
        [0, 0, 1, 0, 0],  # the duplicate's better-IoU box matches...
        [0, 0, 0, 0, 0],
        [0, 0, 2, 0, 0],  # ...the other is a FP, as is the box on the empty image
    ]
    assert cm["normalized"][1] == [0.0, 0.5, 0.5, 0.0, 0.0]
    assert cm["normalized"][3] == [None] * 5
    assert pair_counts(m, "ROTURA", "RAYONES") == (1, 0)
    assert pair_counts(m, "background", "RAYONES") == (2, 0)
    with pytest.raises(DefectFusionError, match="unknown class 'CRACK'"):
        pair_counts(m, "CRACK", "RAYONES")


def test_per_class_counts_and_best_f1_on_hand_case() -> None:
    _, m = _confusion_case()
    ray = m.per_class["RAYONES"]
    # RAYONES predictions by score: .95 TP (image 5, the first taken in score order), .9 on
    # crowd (ignored), .8 FP (it is a crack), .7 FP, .6 FP (duplicate). 1 GT -> best at .95.
    assert (ray.precision, ray.recall, ray.f1, ray.conf) == pytest.approx((1.0, 1.0, 1.0, 0.95))
    assert (ray.num_gt, ray.num_pred) == (1, 5)
    normal = m.per_class["NORMAL"]  # one GT, one prediction at .1 on another image
    assert (normal.precision, normal.recall, normal.f1, normal.conf) == pytest.approx((0.0, 0.0, 0.0, 0.1))
    assert normal.ap50 == 0.0


def test_predicts_nothing_and_undefined_metrics(tmp_path: Path) -> None:
    gt, _ = random_coco_case()
    ev = DetectionEvaluator(gt)
    m = ev.evaluate()  # nothing processed: no images
    assert m.num_images == 0 and m.map50 is None and m.map is None
    assert all(v is None for pc in m.per_class.values() for k, v in pc.to_dict().items() if not k.startswith("num_"))
    assert m.confusion_matrix["normalized"] == [[None] * 5] * 5
    json.dumps(m.to_dict(), allow_nan=False)

    ev.process([1, 9], [Detections.empty(), Detections.empty()])
    m = ev.evaluate()
    assert m.num_images == 2 and m.num_detections == 0
    for name in ("NORMAL", "ROTURA", "RAYONES"):
        pc = m.per_class[name]
        if pc.num_gt:
            assert (pc.ap50, pc.ap, pc.recall, pc.precision) == (0.0, 0.0, 0.0, None)
    assert m.map50 == 0.0
    m_all = ev.evaluate(all_images=True)  # unprocessed images count as "predicted nothing"
    assert m_all.num_images == 10 and m_all.map == 0.0
    write_metrics(m_all, tmp_path / "metrics.json")
    assert Metrics.from_dict(json.loads((tmp_path / "metrics.json").read_text())) == m_all

    # Only crowd GT, images without GT: every AP is undefined.
    only_crowd = coco_case(2, [{"image_id": 1, "category_id": 2, "bbox": _box(0, 0), "iscrowd": 1}])
    ev = DetectionEvaluator(only_crowd)
    ev.process([1, 2], [Detections(_xyxy(_box(0, 0)), torch.tensor([0.9]), torch.tensor([1])), Detections.empty()])
    m = ev.evaluate()
    assert m.map50 is None and m.per_class["ROTURA"].ap50 is None
    assert m.num_ground_truth == 0 and sum(map(sum, m.confusion_matrix["counts"])) == 0
    json.dumps(m.to_dict(), allow_nan=False)


def test_bad_annotations_and_detections() -> None:
    gt, _ = random_coco_case()
    broken = copy.deepcopy(gt)
    broken["annotations"][2]["category_id"] = 42
    with pytest.raises(DataError, match=r"annotations\[2\]: category_id 42"):
        DetectionEvaluator(broken)
    ev = DetectionEvaluator(gt)
    with pytest.raises(DataError, match="image id 99"):
        ev.process([99], [Detections.empty()])
    with pytest.raises(DataError, match="label 4"):
        ev.process([1], [Detections(_xyxy(_box(0, 0)), torch.tensor([0.9]), torch.tensor([4]))])
    with pytest.raises(ConfigError):
        DetectionEvaluator(gt, iou_threshold=0.0)
    with pytest.raises(ValueError, match="NaN"):
        write_metrics(Metrics(map50=None, map=float("nan")), "unused.json")


def test_metrics_record_keeps_the_json_schema_and_round_trips(tmp_path: Path) -> None:
    # to_dict() is metrics.json: the schema of the module docstring, key for key and in order
    # (checked once against the dict the evaluator returned before it returned a record: same JSON).
    ev, m = _confusion_case()
    d = m.to_dict()
    assert list(d) == [
        "map50", "map", "num_images", "num_ground_truth", "num_detections", "per_class", "confusion_matrix", "pr_curves"
    ]  # fmt: skip
    assert list(d["per_class"]) == ev.class_names
    for name, entry in d["per_class"].items():
        assert list(entry) == ["ap50", "ap", "precision", "recall", "f1", "conf", "num_gt", "num_pred"]
        assert entry == {k: getattr(m.per_class[name], k) for k in entry}
    assert d["per_class"]["RAYONES"]["num_pred"] == 5 and d["per_class"]["RAYONES"]["conf"] == pytest.approx(0.95)
    assert list(d["confusion_matrix"]) == [
        "labels", "counts", "normalized", "rows", "columns", "iou_threshold", "conf_threshold"
    ]  # fmt: skip
    assert all(list(c) == ["recall", "precision"] for c in d["pr_curves"].values())
    assert (d["map50"], d["map"], d["num_images"]) == (m.map50, m.map, m.num_images)

    assert Metrics.from_dict(d) == m
    write_metrics(m, tmp_path / "metrics.json")
    text = (tmp_path / "metrics.json").read_text()
    assert json.loads(text) == d and Metrics.from_dict(json.loads(text)) == m

    # keys another writer added survive a read and a write; a partial dict reads with undefined values
    assert Metrics.from_dict({**d, "note": "kept"}).to_dict() == {**d, "note": "kept"}
    partial = Metrics.from_dict({"map50": 0.5, "per_class": {"A": {"ap50": 0.4}}})
    assert partial.map is None and partial.per_class["A"] == ClassMetrics(ap50=0.4)
    assert partial.ap50_of("A") == 0.4 and partial.ap50_of("B") is None
    with pytest.raises(TypeError, match="per_class"):
        Metrics.from_dict({"map50": 0.5})
