"""FP16 export: the graph's weights stored in float16, inputs, outputs and arithmetic in float32.

Each float32 initializer of at least :data:`MIN_ELEMENTS` values becomes a float16 initializer
followed by a ``Cast`` to float32, so the file is about half the size and every runtime (the CPU
one included) runs it unchanged; the accuracy cost is the weights' rounding alone. A graph that
also *computes* in float16 (faster on GPUs with tensor cores) needs per-runtime lists of the
operators that must stay float32 (GridSample, TopK, the box arithmetic), which cannot be checked
without that runtime; this module does not write one.

:func:`check_half` measures what the rounding costs against the float32 PyTorch model: label
agreement and score differences on the export's own sample batches and, with a COCO file, mAP on
its images, both runs preparing them alike (:func:`checking_predictors`: the graph's size, the model's
resize); the export fails when the mAP drops by more than the stated bound.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision.ops import box_iou

from ...structures import Detections, Metrics

if TYPE_CHECKING:
    from ..prediction.onnx_backend import OnnxDetector
    from ..prediction.predictor import Predictor

MIN_ELEMENTS = 16  # smaller tensors (shapes, scalars, indices) stay float32
MATCH_IOU = 0.9  # a float16 detection is the float32 one when their boxes overlap this much
MIN_SCORE = 0.05  # detections compared (the rest is noise that reorders freely)


def halve_initializers(path: str | os.PathLike) -> int:
    """Rewrite the ONNX file at ``path`` with float16 weights cast back to float32; returns how many."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts, kept, count = [], [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < MIN_ELEMENTS:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
        count += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return count


@dataclass
class HalfReport:
    """Float16-weight graph vs float32 PyTorch."""

    compared: int = 0  # float32 detections with score >= MIN_SCORE on the sample batches
    agreeing: int = 0  # of those, found in the float16 output with the same label (IoU >= MATCH_IOU)
    max_score_diff: float = 0.0
    map50_fp32: float | None = None
    map50_fp16: float | None = None
    max_map_drop: float = 0.01
    problems: list[str] = field(default_factory=list)

    @property
    def label_agreement(self) -> float:
        return self.agreeing / self.compared if self.compared else 1.0

    @property
    def map_drop(self) -> float | None:
        if self.map50_fp32 is None or self.map50_fp16 is None:
            return None
        return self.map50_fp32 - self.map50_fp16

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        text = (
            f"float16 weights: label agreement {100 * self.label_agreement:.1f}% of {self.compared} detections "
            f"(score >= {MIN_SCORE}), max |score diff| {self.max_score_diff:.2e}"
        )
        if self.map_drop is not None:
            text += (
                f"; mAP@0.5 {self.map50_fp32:.4f} (float32) -> {self.map50_fp16:.4f} (float16), "
                f"drop {self.map_drop:+.4f} (bound {self.max_map_drop})"
            )
        return text


def agreement(expected: list[Detections], actual: list[Detections], report: HalfReport) -> None:
    """Add the sample batch's float32 (``expected``) vs float16 (``actual``) detections to ``report``."""
    for want, got in zip(expected, actual, strict=True):
        keep = want.scores >= MIN_SCORE
        boxes, labels, scores = want.boxes[keep], want.labels[keep], want.scores[keep]
        report.compared += len(scores)
        if not len(scores) or not len(got):
            continue
        iou = box_iou(boxes.double(), got.boxes.double())
        same = labels[:, None] == got.labels[None, :]
        for i in range(len(scores)):
            candidates = torch.nonzero((iou[i] >= MATCH_IOU) & same[i]).flatten()
            if len(candidates):
                report.agreeing += 1
                diff = (got.scores[candidates] - scores[i]).abs().min()
                report.max_score_diff = max(report.max_score_diff, float(diff))


def check_half(report: HalfReport, metrics_fp32: Metrics | None, metrics_fp16: Metrics | None) -> None:
    """Fill in the mAPs and the verdict: a drop beyond the bound is a problem."""
    if metrics_fp32 is not None and metrics_fp16 is not None:
        report.map50_fp32, report.map50_fp16 = float(metrics_fp32.map50), float(metrics_fp16.map50)
        if report.map_drop > report.max_map_drop:
            report.problems.append(
                f"mAP@0.5 drops by {report.map_drop:.4f} with float16 weights, beyond the bound {report.max_map_drop}"
            )


def half_report(
    model: torch.nn.Module,
    path: str | os.PathLike,
    samples: list[tuple[torch.Tensor, torch.Tensor]],
    reference: Callable[..., list[Detections]],
    top_k: int,
    index: Any = None,
    max_map_drop: float = 0.01,
) -> HalfReport:
    """Check the float16-weight graph at ``path`` against ``model``: ``samples`` are ``(images, sizes)``
    batches, ``reference(model, images, sizes, top_k)`` the float32 detections; ``index`` a COCO index."""
    from ..evaluation.validation import evaluate_on_index
    from ..prediction.onnx_backend import OnnxDetector

    detector = OnnxDetector(path)
    report = HalfReport(max_map_drop=max_map_drop)
    for images, sizes in samples:
        agreement(reference(model, images, sizes, top_k), detector(images, sizes), report)
    if index is not None:
        fp32, fp16 = checking_predictors(model, detector, top_k)
        metrics_fp16, _ = evaluate_on_index(fp16, index, progress=False, desc="float16")
        metrics_fp32, _ = evaluate_on_index(fp32, index, progress=False, desc="float32")
        check_half(report, metrics_fp32, metrics_fp16)
    return report


def checking_predictors(model: torch.nn.Module, detector: OnnxDetector, top_k: int) -> tuple[Predictor, Predictor]:
    """The float32 model and the float16-weight graph (``detector``, an :class:`~.onnx_backend.OnnxDetector`)
    as predictors that prepare every image alike: the graph's input size and the model's own resize
    (``model.meta.resize``: a letterbox model is scored on letterboxed images by both), so the two mAPs
    differ by the weights' rounding alone."""
    from ...models.inference import InputSpec
    from ..prediction.predictor import Predictor, TorchBackend

    spec = InputSpec.of(model.meta).with_size(detector.image_size)  # the size the graph was exported at (--size)
    ids = model.meta.category_ids
    fp32 = Predictor(TorchBackend(model, "cpu", top_k), model.class_names, spec, category_ids=ids)
    fp16 = Predictor(detector, detector.class_names, spec, category_ids=ids)
    return fp32, fp16
