"""A COCO results file scored as the evaluator scores detections, and every way it can be wrong named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from defectfusion.engine.evaluation.evaluator import DetectionEvaluator
from defectfusion.engine.evaluation.results_file import evaluate_results_file
from defectfusion.errors import DataError
from tests.helpers import random_coco_case, results_as_detections


def test_results_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    gt, results = random_coco_case()
    ann, res = tmp_path / "ann.json", tmp_path / "res.json"
    ann.write_text(json.dumps(gt))
    res.write_text(json.dumps(results))
    ev = DetectionEvaluator(ann)
    ev.process(list(range(1, 11)), [results_as_detections(results, i) for i in range(1, 11)])
    direct, from_file = ev.evaluate(), evaluate_results_file(res, ann)
    assert from_file.map == pytest.approx(direct.map, abs=1e-9)
    assert from_file.confusion_matrix == direct.confusion_matrix
    for name, pc in direct.per_class.items():
        for k, v in pc.to_dict().items():
            w = getattr(from_file.per_class[name], k)
            assert (v is None and w is None) or math.isclose(v, w, abs_tol=1e-9), (name, k)
    assert evaluate_results_file(res, ann, all_images=False).num_images == 9  # image 10 has none

    def bad(content: str, match: str) -> None:
        res.write_text(content)
        with pytest.raises(DataError, match=match):
            evaluate_results_file(res, ann)

    bad("{not json", "res.json is not valid JSON")
    bad('{"a": 1}', "expected a JSON list")
    bad(
        json.dumps([results[0], {"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}]),
        r"record 1: missing \['score'\]",
    )
    bad(json.dumps([{**results[0], "image_id": 99}]), "record 0: image_id 99 is not in annotations file")
    bad(json.dumps([{**results[0], "category_id": 3}]), "record 0: category_id 3")
    bad(json.dumps([{**results[0], "bbox": [0, 0, -1, 2]}]), "record 0: 'bbox' width and height")
    bad(json.dumps([{**results[0], "score": "high"}]), "record 0: 'score'")
    with pytest.raises(DataError, match=r"results file .*missing.json does not exist"):
        evaluate_results_file(tmp_path / "missing.json", ann)
