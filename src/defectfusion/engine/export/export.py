"""ONNX export with the class text embeddings baked in, checked against PyTorch before it is kept.

The graph is :class:`~defectfusion.models.deploy.DeployDetector` traced at one input size:

    inputs   images             float32 [B, 3, H, W], RGB resized to (H, W), /255, (x - mean) / std
             orig_target_sizes  int64   [B, 2], each image's original size as (H, W)
    outputs  labels             int64   [B, K]     contiguous class index
             boxes              float32 [B, K, 4]  x1, y1, x2, y2 in pixels of the original image
             scores             float32 [B, K]     sigmoid confidence, best first

``B`` is dynamic or fixed (``batch``); ``K = min(top_k, queries x classes)``. No text encoder,
no tokenizer: the fusion heads' text embeddings are constants of the graph. The ONNX
``metadata_props`` say what a user of the file needs (see :func:`onnx_metadata`).

:func:`export_onnx` writes the file only after onnxruntime's detections on a test batch equal
PyTorch's (``DefectDetector`` + :func:`~defectfusion.models.postprocess.postprocess`): same labels, boxes within
``1e-3`` px, scores within ``1e-4``. Otherwise it raises :class:`ExportError` and writes nothing.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError, DefectFusionError
from ...io import atomic_path
from ...models.postprocess import postprocess
from ...structures import Detections
from ..prediction.onnx_backend import INPUT_NAMES, OUTPUT_NAMES, OnnxDetector
from .export_half import HalfReport, half_report, halve_initializers
from .onnx_metadata import onnx_metadata, write_metadata

#: Opsets the export supports: GridSample (deformable attention) needs 16; the TorchScript
#: exporter stops at 20.
MIN_OPSET, MAX_OPSET = 16, 20
DEFAULT_OPSET = 17
DEFAULT_TOP_K = 300
BOX_TOLERANCE = 1e-3  # pixels
SCORE_TOLERANCE = 1e-4


class ExportError(DefectFusionError):
    """The exported graph does not compute what the PyTorch model computes (or cannot be exported)."""


# ----------------------------------------------------------------------------- parity


@dataclass
class ParityReport:
    """onnxruntime vs PyTorch detections on one test batch."""

    batch: int
    detections: int
    max_box_diff: float
    max_score_diff: float
    mismatched: int
    boundary: int = 0  # unmatched pairs tied at the top-k cut (not errors)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        text = (
            f"batch {self.batch}: {self.detections} detections, labels equal, max |box diff| "
            f"{self.max_box_diff:.2e} px, max |score diff| {self.max_score_diff:.2e}"
        )
        if self.boundary:
            text += f" ({self.boundary} tied at the top-k cut)"
        return text if self.ok else f"batch {self.batch}: " + "; ".join(self.problems)


def compare_detections(
    expected: Sequence[Detections],
    actual: Sequence[Detections],
    *,
    box_tolerance: float = BOX_TOLERANCE,
    score_tolerance: float = SCORE_TOLERANCE,
    topk_cut: bool = False,
) -> ParityReport:
    """Match detections one to one: same label, score within tolerance, box within tolerance.

    Order within equal scores does not matter (top-k breaks ties differently in different
    runtimes). With ``topk_cut`` (the top-k dropped candidates), a pair left unmatched is
    tolerated when both are tied, within tolerance, with the lowest score kept: rounding moved
    which of two tied candidates made the cut.
    """
    report = ParityReport(len(expected), 0, 0.0, 0.0, 0)
    if len(expected) != len(actual):
        report.problems.append(f"{len(actual)} results for {len(expected)} images")
        return report
    for image, (a, b) in enumerate(zip(expected, actual, strict=True)):
        if len(a) != len(b):
            report.problems.append(f"image {image}: {len(b)} detections, expected {len(a)}")
            continue
        report.detections += len(a)
        if not len(a):
            continue
        box_diff = (a.boxes[:, None, :].double() - b.boxes[None, :, :].double()).abs().amax(-1)  # [Na, Nb]
        score_diff = (a.scores[:, None].double() - b.scores[None, :].double()).abs()
        candidate = (
            (a.labels[:, None] == b.labels[None, :]) & (box_diff <= box_tolerance) & (score_diff <= score_tolerance)
        )
        free = torch.ones(len(b), dtype=torch.bool)
        unmatched = []
        for i in range(len(a)):
            options = (candidate[i] & free).nonzero().flatten()
            if not len(options):
                unmatched.append(i)
                continue
            cost = box_diff[i, options] / box_tolerance + score_diff[i, options] / score_tolerance
            j = options[cost.argmin()]
            free[j] = False
            report.max_box_diff = max(report.max_box_diff, float(box_diff[i, j]))
            report.max_score_diff = max(report.max_score_diff, float(score_diff[i, j]))
        cut = float(a.scores.min())
        left_a = a.scores[unmatched].double()
        left_b = b.scores[free].double()
        at_cut = bool(
            ((left_a - cut).abs() <= score_tolerance).all() and ((left_b - cut).abs() <= score_tolerance).all()
        )
        if unmatched and at_cut and topk_cut:
            report.boundary += len(unmatched)
        elif unmatched:
            report.mismatched += len(unmatched)
            i = unmatched[0]
            nearest = int(box_diff[i].argmin())
            report.problems.append(
                f"image {image}: {len(unmatched)} of {len(a)} detections have no counterpart (first: label "
                f"{int(a.labels[i])} score {float(a.scores[i]):.6f} box {[round(v, 3) for v in a.boxes[i].tolist()]}; "
                f"nearest: label {int(b.labels[nearest])} score {float(b.scores[nearest]):.6f} "
                f"box {[round(v, 3) for v in b.boxes[nearest].tolist()]})"
            )
    return report


def parity_batch(batch: int, image_size: Sequence[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic test batch: normalised noise images and original sizes (H, W).

    The original sizes are at the model's input scale (the first is the input size itself, the
    others are non-square, so an H/W swap shows): a tolerance in pixels means something only at
    a given scale. At 2000 px one float32 step of a coordinate is already 2.4e-4 px, so two
    float32 runtimes cannot agree to 1e-3 px there by more than luck.
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = int(image_size[0]), int(image_size[1])
    images = torch.randn(batch, 3, height, width, generator=generator)
    shapes = [(height, width), (height * 3 // 4, width * 5 // 4), (height * 5 // 4, width * 2 // 3)]
    sizes = torch.tensor([shapes[i % len(shapes)] for i in range(batch)], dtype=torch.int64)
    return images, sizes


@torch.inference_mode()
def reference_detections(
    model: torch.nn.Module, images: torch.Tensor, orig_sizes: torch.Tensor, top_k: int = DEFAULT_TOP_K
) -> list[Detections]:
    """What the PyTorch model predicts: ``model(pixel_values)`` + the original post-processor."""
    outputs = model(pixel_values=images)
    return postprocess(outputs.logits.float(), outputs.pred_boxes.float(), orig_sizes, top_k=top_k)


def float32_floor(
    model: torch.nn.Module, images: torch.Tensor, orig_sizes: torch.Tensor, top_k: int = DEFAULT_TOP_K
) -> ParityReport:
    """How far PyTorch float32 itself is from float64 on a batch: the accuracy any float32 runtime has."""
    exact_model = copy.deepcopy(model).double().eval()
    exact = reference_detections(exact_model, images.double(), orig_sizes, top_k)
    return compare_detections(
        exact, reference_detections(model, images, orig_sizes, top_k), box_tolerance=1e-1, score_tolerance=1e-3
    )


def check_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    batches: Sequence[int],
    *,
    top_k: int = DEFAULT_TOP_K,
    threads: int | None = None,
) -> list[ParityReport]:
    """Compare onnxruntime on ``path`` with ``model`` (eval) on one test batch per batch size."""
    detector = OnnxDetector(path, threads=threads)
    model.eval()
    cut = top_k < model.config.num_queries * model.config.num_labels
    reports = []
    for seed, batch in enumerate(batches):
        images, sizes = parity_batch(batch, detector.image_size, seed=seed)
        expected = reference_detections(model, images, sizes, top_k)
        reports.append(compare_detections(expected, detector(images, sizes), topk_cut=cut))
    return reports


def tie_hint(model: torch.nn.Module, images: torch.Tensor) -> str:
    """A note for a parity failure that comes from the model, not the export: query-selection scores
    tied at the cut (a barely trained class head), so which queries are kept is arbitrary."""
    with torch.no_grad():
        outputs = model(pixel_values=images)
    scores = getattr(outputs, "enc_outputs_class", None)
    keep = model.config.num_queries
    if scores is None or scores.shape[1] <= keep:
        return ""
    ranked = scores.float().amax(-1).sort(dim=1, descending=True).values
    if not bool((ranked[:, keep - 1] == ranked[:, keep]).any()):
        return ""
    return (
        "; the model's query-selection scores are tied where its top-k cuts them (a class head that has "
        "barely trained), so which queries either runtime keeps is arbitrary: train it longer before exporting"
    )


# ----------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how it was checked."""

    path: Path
    image_size: tuple[int, int]
    batch: int | str
    opset: int
    top_k: int
    class_names: list[str]
    fused: bool
    metadata: dict[str, str]
    parity: list[ParityReport] = field(default_factory=list)
    half: HalfReport | None = None
    size_bytes: int = 0
    seconds: float = 0.0


def parse_batch(batch: int | str) -> int | str:
    """``"dynamic"`` or a positive int (also given as text)."""
    if isinstance(batch, str) and batch.strip().lower() == "dynamic":
        return "dynamic"
    try:
        value = int(batch)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or (isinstance(batch, float) and batch != value):
        raise ConfigError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    return value


def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"unsupported ONNX opset {opset!r}: the export supports opsets {MIN_OPSET}..{MAX_OPSET} "
            f"(GridSample, used by "
            f"the deformable attention, needs {MIN_OPSET}; the TorchScript exporter stops at {MAX_OPSET}); "
            f"default {DEFAULT_OPSET}"
        )
    return opset


def check_out(out: str | os.PathLike) -> Path:
    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the path of the .onnx file to write, e.g. {path / 'model.onnx'}")
    return path


def _trace(deploy: torch.nn.Module, path: Path, batch: int | str, opset: int) -> None:
    example_batch = 1 if batch == "dynamic" else int(batch)
    images, sizes = parity_batch(example_batch, deploy.image_size)
    dynamic_axes = None
    if batch == "dynamic":
        dynamic_axes = {name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation; the dynamo exporter needs onnxscript,
        # which the [export] extra does not install.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            deploy,
            (images, sizes),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_model(
    model: torch.nn.Module,
    out: str | os.PathLike,
    *,
    size: Sequence[int] | None = None,
    batch: int | str = "dynamic",
    opset: int = DEFAULT_OPSET,
    top_k: int = DEFAULT_TOP_K,
    check: bool = True,
    threads: int | None = None,
    half: bool = False,
    check_index: Any = None,
    max_map_drop: float = 0.01,
) -> ExportResult:
    """Export an in-memory detector (see :func:`export_onnx`); the model is moved to CPU float32, in eval mode.

    ``half``: store the weights in float16 (:mod:`.export_half`) and check the graph by label
    agreement on the sample batches and, on ``check_index`` (a COCO index), by mAP@0.5 against the
    float32 model; a drop beyond ``max_map_drop`` fails the export.
    """
    from ...models.deploy import DeployDetector
    from ...models.detector import check_image_size

    start = time.perf_counter()
    opset = check_opset(opset)
    batch = parse_batch(batch)
    out = check_out(out)
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    model = model.to("cpu", torch.float32).eval()
    image_size = tuple(int(s) for s in (size or model.meta.image_size))
    check_image_size(model.config, image_size, "export size (H, W)")
    deploy = DeployDetector(model, image_size, top_k=top_k).eval()
    metadata = onnx_metadata(model, image_size, batch, opset, deploy.top_k)
    result = ExportResult(
        out, image_size, batch, opset, deploy.top_k, list(model.class_names), model.meta.fusion is not None, metadata
    )
    with atomic_path(out, suffix=".onnx") as tmp:
        try:
            _trace(deploy, tmp, batch, opset)
        except DefectFusionError:
            raise
        except Exception as exc:
            raise ExportError(f"the ONNX exporter failed: {type(exc).__name__}: {exc}") from exc
        if half:
            halve_initializers(tmp)
            metadata["weights"] = "float16 (cast to float32 in the graph)"
        write_metadata(tmp, metadata)
        if half:
            samples = [
                parity_batch(n, image_size, seed=i) for i, n in enumerate([1, 2] if batch == "dynamic" else [batch])
            ]
            result.half = half_report(
                model, tmp, samples, reference_detections, deploy.top_k, check_index, max_map_drop
            )
            if not result.half.ok:
                raise ExportError(
                    f"float16 export refused, nothing written to {out}: " + "; ".join(result.half.problems)
                )
        elif check:
            batches = [1, 2] if batch == "dynamic" else [int(batch)]
            result.parity = check_onnx(model, tmp, batches, top_k=deploy.top_k, threads=threads)
            failed = [r for r in result.parity if not r.ok]
            if failed:
                images, sizes = parity_batch(failed[0].batch, image_size, seed=batches.index(failed[0].batch))
                floor = float32_floor(model, images, sizes, deploy.top_k)
                raise ExportError(
                    f"onnxruntime disagrees with PyTorch, nothing written to {out}: "
                    + " | ".join(r.summary() for r in failed)
                    + f" (tolerances: boxes {BOX_TOLERANCE} px, scores {SCORE_TOLERANCE}, labels exact; for scale, "
                    f"PyTorch float32 is {floor.max_box_diff:.1e} px and {floor.max_score_diff:.1e} in score from "
                    f"float64 on this batch)" + tie_hint(model, images)
                )
        result.size_bytes = tmp.stat().st_size
    result.seconds = time.perf_counter() - start
    return result
