"""model.predict: typed detections in original-image pixels, the same as the file predictor's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from defectfusion.data.coco import load_coco
from defectfusion.engine.prediction.predictor import Predictor
from defectfusion.errors import DataError
from defectfusion.models.checkpoint import load_detector
from defectfusion.models.inference import keep_detections
from defectfusion.structures import Detections


@pytest.fixture(scope="module")
def wide_image(kit, tmp_path_factory):
    """A validation image stretched to 150 x 96 (W x H): boxes must come back in its own pixels."""
    record = load_coco(kit.val_ann).images[0]
    path = tmp_path_factory.mktemp("wide") / "wide.png"
    Image.open(record.path).convert("RGB").resize((150, 96)).save(path)
    return path


def test_predict_equals_the_file_predictor_for_every_kind_of_input(kit, wide_image):
    model = load_detector(kit.baseline)
    [expected] = list(Predictor.from_model(model, threshold=0.02).predict_files([wide_image]))
    assert len(expected.detections) > 0
    array = np.array(Image.open(wide_image).convert("RGB"))
    inputs = [str(wide_image), wide_image, Image.open(wide_image), array, torch.from_numpy(array).permute(2, 0, 1)]
    results = model.predict(inputs, threshold=0.02)
    assert len(results) == len(inputs)
    for det in results:
        torch.testing.assert_close(det.boxes, expected.detections.boxes)
        torch.testing.assert_close(det.scores, expected.detections.scores)
        assert torch.equal(det.labels, expected.detections.labels)
        assert det.boxes[:, 0::2].max() <= 150 and det.boxes[:, 1::2].max() <= 96 and det.boxes.min() >= 0
        assert torch.all(det.scores[:-1] >= det.scores[1:]) and det.scores.min() >= 0.02
    [single] = model.predict(wide_image, threshold=0.02)  # one image in: a list of one out
    torch.testing.assert_close(single.boxes, expected.detections.boxes)


def test_class_wise_nms_merges_duplicates_of_one_class_only():
    boxes = torch.tensor([[10.0, 10, 50, 50], [11, 11, 51, 51], [10, 10, 50, 50], [-5, 60, 30, 200]])
    found = Detections(boxes, torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([0, 0, 1, 0]))
    kept = keep_detections(found, (100, 120), threshold=0.65, nms_iou=0.5)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7])  # the class-0 duplicate goes, class 1 stays
    assert kept.labels.tolist() == [0, 1]
    clipped = keep_detections(found, (100, 120), threshold=0.0)
    assert len(clipped) == 4 and clipped.boxes[3].tolist() == [0.0, 60.0, 30.0, 100.0]  # off: all kept, clipped


def test_predict_applies_nms_when_asked_and_keeps_the_mode(kit, wide_image):
    from torchvision.ops import box_iou

    model = load_detector(kit.baseline).train()
    [raw] = model.predict(wide_image, threshold=0.0, top_k=100)
    [merged] = model.predict(wide_image, threshold=0.0, top_k=100, nms_iou=0.05)
    assert model.training  # predict runs in eval mode and gives the model back as it was
    assert 0 < len(merged) <= len(raw)
    for label in merged.labels.unique():
        same = merged.boxes[merged.labels == label]
        assert box_iou(same, same).fill_diagonal_(0).max() <= 0.05


def test_predict_names_bad_input(kit):
    model = load_detector(kit.baseline)
    with pytest.raises(DataError, match=r"uint8 \[3, H, W\].*float32 \[3, 8, 8\]"):
        model.predict(torch.rand(3, 8, 8))
    with pytest.raises(DataError, match=r"uint8 \[H, W\] or \[H, W, 3\].*\[8, 8, 4\]"):
        model.predict(np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="does not exist"):
        model.predict("missing.png")
    with pytest.raises(DataError, match="threshold must be in"):
        model.predict(np.zeros((8, 8), dtype=np.uint8), threshold=2)
