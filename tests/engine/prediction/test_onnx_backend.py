"""An ONNX file as a backend, on a hand-made graph: what its metadata says, how it is fed, what it refuses.

The graph returns one detection per image whose score is the image's mean and whose box is the
original size it was fed, (H, W, H, W): what goes in, in which order, is visible in what comes out."""

from __future__ import annotations

import json

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from defectfusion.config import ModelConfig  # noqa: E402
from defectfusion.engine.export.onnx_metadata import onnx_metadata, write_metadata  # noqa: E402
from defectfusion.engine.prediction.onnx_backend import OnnxDetector, is_onnx_checkpoint, read_metadata  # noqa: E402
from defectfusion.errors import CheckpointError, DataError  # noqa: E402
from defectfusion.models.detector import build_detector  # noqa: E402

SIZE = (32, 48)


def _graph(path, metadata=None):
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "one"], ["scores"]),
        helper.make_node("Cast", ["orig_target_sizes"], ["sizes"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["sizes", "sizes"], ["flat"], axis=1),
        helper.make_node("Unsqueeze", ["flat", "one"], ["boxes"]),
        helper.make_node("Mul", ["scores", "zero"], ["nothing"]),
        helper.make_node("Cast", ["nothing"], ["labels"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "stand-in",
        [
            helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, *SIZE]),
            helper.make_tensor_value_info("orig_target_sizes", TensorProto.INT64, ["B", 2]),
        ],
        [
            helper.make_tensor_value_info("labels", TensorProto.INT64, ["B", 1]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", 1, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 1]),
        ],
        initializer=[
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    if metadata is not None:
        write_metadata(path, metadata)
    return path


@pytest.fixture(scope="module")
def metadata():
    return onnx_metadata(
        build_detector(ModelConfig(preset="hgnetv2_micro"), ["crack", "scratch"]), SIZE, "dynamic", 17, 1
    )


def test_the_metadata_reads_back_and_names_the_file_an_onnx_checkpoint(tmp_path, metadata):
    path = _graph(tmp_path / "m.onnx", metadata)
    assert read_metadata(path) == metadata and is_onnx_checkpoint(path)
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(path.read_bytes())
    assert is_onnx_checkpoint(renamed)
    (tmp_path / "weights.pth").write_bytes(b"PK\x03\x04 a zip archive")
    assert not is_onnx_checkpoint(tmp_path / "weights.pth") and not is_onnx_checkpoint(tmp_path)


def test_the_graph_is_fed_as_its_metadata_says(tmp_path, metadata):
    detector = OnnxDetector(_graph(tmp_path / "m.onnx", metadata), threads=1)
    assert detector.class_names == ["crack", "scratch"] and detector.image_size == SIZE and detector.batch is None
    assert json.loads(metadata["image_mean"]) == pytest.approx(list(detector.image_mean))
    images = torch.stack([torch.full((3, *SIZE), 0.25), torch.full((3, *SIZE), 0.75)])
    found = detector(images, torch.tensor([[100, 20], [30, 60]]))
    assert [d.scores.tolist() for d in found] == [[0.25], [0.75]]
    assert found[0].boxes.tolist() == [[100.0, 20.0, 100.0, 20.0]]  # sizes go in as (H, W)
    with pytest.raises(DataError):
        detector(torch.zeros(1, 3, 16, 16), torch.tensor([[16, 16]]))


def test_a_file_without_the_metadata_is_refused_with_the_reason(tmp_path):
    with pytest.raises(CheckpointError, match="input size and normalisation are unknown"):
        OnnxDetector(_graph(tmp_path / "bare.onnx"))
    with pytest.raises(CheckpointError, match="does not exist"):
        OnnxDetector(tmp_path / "none.onnx")
