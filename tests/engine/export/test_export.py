"""ONNX export: onnxruntime computes PyTorch's detections; the file says how to use it; errors are one line."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from torch.jit import TracerWarning  # noqa: E402

from defectfusion.cli import main  # noqa: E402
from defectfusion.config import FusionConfig, ModelConfig  # noqa: E402
from defectfusion.engine.export import export as export_engine  # noqa: E402
from defectfusion.engine.export.export import (  # noqa: E402
    BOX_TOLERANCE,
    SCORE_TOLERANCE,
    ExportError,
    check_onnx,
    compare_detections,
    export_model,
    parity_batch,
    reference_detections,
)
from defectfusion.engine.prediction.onnx_backend import OnnxDetector, is_onnx_checkpoint  # noqa: E402
from defectfusion.models.checkpoint import save_detector  # noqa: E402
from defectfusion.models.deploy import DeployDetector  # noqa: E402
from defectfusion.models.detector import add_fusion, build_detector  # noqa: E402
from defectfusion.models.fusion import random_text_embeddings  # noqa: E402
from defectfusion.structures import Detections  # noqa: E402
from tests.helpers import ORIGINAL_FIXTURES

TINY = ["dinov3_micro", "hgnetv2_micro"]
TEXT_DIM = 24


pytestmark = pytest.mark.usefixtures("one_thread")


def spread_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights with unit-scale activations.

    transformers' init (std 0.01 convolutions) makes a tiny random HGNetV2 output ~1e-17, so every
    query-selection score is the same number and top-k picks among exact ties: no runtime would
    agree with another on that. Trained models, and these weights, have distinct scores.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / module.weight[0].numel() ** 0.5
                )
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def tiny_models(preset: str, classes: list[str]):
    """(base, fused) with the same weights; the fused gates are open, so the fusion really computes."""
    torch.manual_seed(0)
    base = build_detector(ModelConfig(preset=preset), classes)
    spread_weights(base)
    fused = add_fusion(
        base,
        FusionConfig(),
        random_text_embeddings(len(classes), TEXT_DIM, seed=1),
        encoder="file:test",
        descriptions="test",
    )
    with torch.no_grad():
        for head in fused.fusion_heads():
            head.gate.fill_(0.5)
    return base.eval(), fused.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Exported tiny models, made once: {(preset, "base"|"fused"): (model, path)}."""
    folder = tmp_path_factory.mktemp("onnx")
    classes = ["NORMAL", "ROTURA_FRACTURA", "RAYONES_ARANAZOS"]
    cache: dict[tuple[str, str], tuple[torch.nn.Module, Path]] = {}

    def get(preset: str, kind: str):
        if (preset, kind) not in cache:
            base, fused = tiny_models(preset, classes)
            for name, model in (("base", base), ("fused", fused)):
                path = folder / f"{preset}_{name}.onnx"
                with warnings.catch_warnings():
                    # No data-dependent Python value may reach the trace.
                    warnings.simplefilter("error", TracerWarning)
                    export_model(model, path, check=False)
                cache[(preset, name)] = (model, path)
        return cache[(preset, kind)]

    return get


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", ["base", "fused"])
@pytest.mark.parametrize("preset", TINY)
def test_onnxruntime_detections_equal_pytorch(exported, preset, kind):
    model, path = exported(preset, kind)
    detector = OnnxDetector(path, threads=1)
    for batch in (1, 2):  # the graph's batch is dynamic
        images, sizes = parity_batch(batch, detector.image_size, seed=batch)
        expected = reference_detections(model, images, sizes)
        actual = detector(images, sizes)
        report = compare_detections(expected, actual, box_tolerance=BOX_TOLERANCE, score_tolerance=SCORE_TOLERANCE)
        assert report.ok, report.summary()
        num_queries, num_classes = model.config.num_queries, model.config.num_labels
        assert report.detections == batch * min(300, num_queries * num_classes) and report.boundary == 0
        assert report.max_box_diff <= BOX_TOLERANCE and report.max_score_diff <= SCORE_TOLERANCE
        for a, b in zip(expected, actual, strict=True):  # in order too, as no two scores tie here
            assert torch.equal(a.labels, b.labels)
            assert (a.boxes - b.boxes).abs().max() <= BOX_TOLERANCE and (
                a.scores - b.scores
            ).abs().max() <= SCORE_TOLERANCE


@pytest.mark.parametrize("preset", TINY)
def test_the_fusion_changes_the_detections_and_is_a_graph_constant(exported, preset):
    base, base_path = exported(preset, "base")
    fused, fused_path = exported(preset, "fused")
    images, sizes = parity_batch(1, base.meta.image_size)
    a, b = OnnxDetector(base_path, threads=1)(images, sizes)[0], OnnxDetector(fused_path, threads=1)(images, sizes)[0]
    assert (a.scores - b.scores).abs().max() > 1e-3  # the gates are open: the fused graph computes the text logits
    graph = onnx.load(str(fused_path)).graph
    assert [i.name for i in graph.input] == ["images", "orig_target_sizes"]  # no text input, no tokens
    text = next(fused.fusion_heads()).text_embeddings
    constants = [torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in graph.initializer]
    constants += [
        torch.from_numpy(onnx.numpy_helper.to_array(n.attribute[0].t).copy())
        for n in graph.node
        if n.op_type == "Constant" and n.attribute[0].type == onnx.AttributeProto.TENSOR
    ]
    assert any(
        c.shape in (text.shape, text.t().shape)
        and torch.allclose(c.reshape(text.shape) if c.shape == text.shape else c.t(), text)
        for c in constants
    )


@pytest.mark.parametrize("preset", TINY)
def test_deploy_forward_computes_the_model_outputs(preset):
    _, fused = tiny_models(preset, ["a", "b", "c"])
    deploy = DeployDetector(fused)
    images = torch.randn(2, 3, *fused.meta.image_size)
    with torch.no_grad():
        out = fused(pixel_values=images)
        logits, boxes = deploy.raw(images)
    assert (out.logits - logits).abs().max() < 1e-4 and (out.pred_boxes - boxes).abs().max() < 1e-5


def test_metadata_tells_how_to_use_the_file(exported):
    model, path = exported("dinov3_micro", "fused")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["defectfusion.format"] == "defectfusion.onnx.v1"
    assert json.loads(meta["class_names"]) == model.class_names
    assert json.loads(meta["image_size"]) == list(model.meta.image_size)
    assert json.loads(meta["image_mean"]) == pytest.approx(list(model.meta.image_mean))
    assert json.loads(meta["image_std"]) == pytest.approx(list(model.meta.image_std))
    assert meta["orig_target_sizes"] == "H,W" and meta["batch"] == "dynamic"
    assert json.loads(meta["fusion"])["encoder"] == "file:test"
    detector = OnnxDetector(path)
    assert detector.class_names == model.class_names and detector.image_size == tuple(model.meta.image_size)
    assert detector.image_mean == pytest.approx(model.meta.image_mean) and detector.batch is None
    assert is_onnx_checkpoint(path)
    renamed = path.parent / "model.bin"
    renamed.write_bytes(path.read_bytes())
    assert is_onnx_checkpoint(renamed) and not is_onnx_checkpoint(path.parent)
    with pytest.raises(Exception, match="exported at"):
        detector(torch.zeros(1, 3, 32, 32), torch.tensor([[32, 32]]))


def test_fixed_batch_graph_and_chunked_calls(tmp_path):
    _, fused = tiny_models("hgnetv2_micro", ["a", "b"])
    result = export_model(fused, tmp_path / "fixed.onnx", batch=2, threads=1)  # checks itself on batch 2
    assert result.batch == 2 and [r.batch for r in result.parity] == [2] and all(r.ok for r in result.parity)
    graph = onnx.load(str(result.path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    detector = OnnxDetector(result.path, threads=1)
    images, sizes = parity_batch(3, detector.image_size, seed=5)  # 3 images through a batch-2 graph
    report = compare_detections(reference_detections(fused, images, sizes), detector(images, sizes))
    assert report.ok and report.batch == 3, report.summary()


def test_box_order_follows_h_w(exported):
    model, path = exported("hgnetv2_micro", "base")
    images, _ = parity_batch(1, model.meta.image_size)
    tall = OnnxDetector(path, threads=1)(images, torch.tensor([[1000, 10]]))[0]
    assert tall.boxes[:, 1::2].abs().max() > 10 * tall.boxes[:, 0::2].abs().max()  # y scaled by H = 1000


# ----------------------------------------------------------------------------- original DEIMv2 checkpoints


@pytest.mark.parametrize("name", ["mini_dinov3", "mini_hgnetv2"])
def test_export_of_an_original_checkpoint_reproduces_the_original_deploy_outputs(tmp_path, name):
    folder = ORIGINAL_FIXTURES / name
    if not (folder / "checkpoint.pth").is_file():
        pytest.skip(f"original DEIMv2 fixture {folder} is absent (it lives in ../shared beside the checkout)")
    from defectfusion.commands.convert import convert_original

    model = convert_original(folder / "checkpoint.pth", folder / "config.yml").model.eval()
    expected = torch.load(folder / "expected.pt", map_location="cpu", weights_only=True)
    top_k = int(expected["num_top_queries"])
    path = export_model(model, tmp_path / "original.onnx", top_k=top_k, check=False).path
    detector = OnnxDetector(path, threads=1)

    # 1. The original DEIMv2 code's post-processed outputs on the fixture image (non-square sizes).
    width, height = expected["orig_target_sizes_nonsquare"][0].tolist()  # the original takes (W, H)
    pixels = torch.load(folder / "input.pt", map_location="cpu", weights_only=True)
    original = expected["ema"]["nonsquare"]
    reference = [Detections(original["boxes"].float(), original["scores"].float(), original["labels"].long())]
    # our PyTorch model reproduces the original's logits to ~1e-5 (conversion tests); boxes to 1e-2 px
    report = compare_detections(
        reference,
        detector(pixels, torch.tensor([[height, width]])),
        box_tolerance=1e-2,
        score_tolerance=1e-4,
        topk_cut=True,
    )
    assert report.ok and report.detections == top_k, report.summary()

    # 2. onnxruntime is as close to the exact (float64) result as PyTorch float32 is. These random,
    # perturbed weights make the HGNetV2 fixture ill-conditioned: PyTorch float32 itself is ~1e-3 px
    # from float64 at the 320 px scale, so no float32 runtime can meet 1e-3 px against it.
    images, sizes = parity_batch(2, detector.image_size, seed=0)
    exact = reference_detections(copy.deepcopy(model).double(), images.double(), sizes, top_k)
    floor = compare_detections(
        exact, reference_detections(model, images, sizes, top_k), box_tolerance=1e-2, topk_cut=True
    )
    ours = compare_detections(exact, detector(images, sizes), box_tolerance=1e-2, topk_cut=True)
    assert floor.ok and ours.ok, (floor.summary(), ours.summary())
    assert ours.max_box_diff <= 2 * floor.max_box_diff + 1e-4, (ours.summary(), floor.summary())
    assert ours.max_score_diff <= 2 * floor.max_score_diff + 1e-6, (ours.summary(), floor.summary())
    if name == "mini_dinov3":  # well conditioned: the tolerances hold against PyTorch directly
        assert all(r.ok for r in check_onnx(model, path, [1, 2], top_k=top_k, threads=1))


# ----------------------------------------------------------------------------- failing loudly


def test_an_export_that_disagrees_with_pytorch_fails_and_writes_nothing(tmp_path, monkeypatch):
    _, fused = tiny_models("hgnetv2_micro", ["a", "b"])
    real = export_engine.reference_detections

    def shifted(*args, **kwargs):
        return [Detections(d.boxes + 0.01, d.scores, d.labels) for d in real(*args, **kwargs)]

    monkeypatch.setattr(export_engine, "reference_detections", shifted)
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(ExportError, match="onnxruntime disagrees with PyTorch"):
        export_model(fused, out, batch=1, threads=1)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_compare_detections_is_tie_tolerant_but_strict():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0], [1.0, 2.0, 3.0, 4.0]])
    a = Detections(boxes, torch.tensor([0.9, 0.5, 0.5]), torch.tensor([1, 2, 0]))
    swapped = Detections(boxes[[0, 2, 1]], torch.tensor([0.9, 0.5, 0.5]), torch.tensor([1, 0, 2]))
    assert compare_detections([a], [swapped]).ok
    relabelled = Detections(boxes, a.scores, torch.tensor([1, 2, 1]))
    assert not compare_detections([a], [relabelled]).ok
    # only where the top-k cut dropped candidates may a tie at the cut go either way
    assert compare_detections([a], [relabelled], topk_cut=True).ok
    assert not compare_detections([a], [Detections(boxes, a.scores, torch.tensor([0, 2, 0]))], topk_cut=True).ok
    moved = Detections(boxes + torch.tensor([0.0, 0.0, 0.0, 2e-3]), a.scores, a.labels)
    assert not compare_detections([a], [moved]).ok
    rescored = Detections(boxes, a.scores + torch.tensor([0.0, 2e-4, 0.0]), a.labels)
    assert not compare_detections([a], [rescored]).ok


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    _, fused = tiny_models("hgnetv2_micro", ["NORMAL", "ROTURA_FRACTURA", "RAYONES_ARANAZOS"])
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    save_detector(fused, folder)
    return folder


def _one_line_error(capsys, code: int, *fragments: str) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured
    err = captured.err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_cli_export_then_predict_with_the_onnx_file(tmp_path, capsys, checkpoint):
    from PIL import Image

    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--threads", "1"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert out.is_file() and f"wrote {out}" in printed and "onnxruntime = PyTorch: batch 2" in printed

    images = tmp_path / "images"
    images.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(70, 90), (120, 64)]):
        pixels = torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(images / f"im{i}.png")
    runs = {}
    for name, ckpt in (("onnx", out), ("torch", checkpoint)):
        code = main(
            [
                "predict",
                str(images),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / name),
                "--threshold",
                "0",
                "--no-draw",
                "--quiet",
            ]
        )
        assert code == 0, capsys.readouterr()
        runs[name] = json.loads((tmp_path / name / "predictions.json").read_text())
    capsys.readouterr()
    for a, b in zip(runs["torch"]["images"], runs["onnx"]["images"], strict=True):
        assert (a["height"], a["width"]) == (b["height"], b["width"])
        got = Detections(
            torch.tensor([d["box_xyxy"] for d in b["detections"]]),
            torch.tensor([d["score"] for d in b["detections"]]),
            torch.tensor([d["label"] for d in b["detections"]]),
        )
        want = Detections(
            torch.tensor([d["box_xyxy"] for d in a["detections"]]),
            torch.tensor([d["score"] for d in a["detections"]]),
            torch.tensor([d["label"] for d in a["detections"]]),
        )
        # predictions.json rounds boxes to 0.01 px and scores to 1e-5
        report = compare_detections([want], [got], box_tolerance=0.011, score_tolerance=2e-5)
        assert report.ok and report.detections > 0, report.summary()


@pytest.mark.parametrize("case", ["missing", "opset_low", "opset_high", "size", "batch", "out_is_folder"])
def test_cli_export_errors_are_one_line_and_write_nothing(tmp_path, capsys, checkpoint, case):
    out = tmp_path / "out" / "model.onnx"
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(out)]
    fragments: tuple[str, ...]
    if case == "missing":
        args[2] = str(tmp_path / "nope")
        fragments = ("does not exist", "nope")
    elif case == "opset_low":
        args += ["--opset", "13"]
        fragments = ("unsupported ONNX opset 13", "16..20")
    elif case == "opset_high":
        args += ["--opset", "21"]
        fragments = ("unsupported ONNX opset 21",)
    elif case == "size":
        args += ["--size", "100", "96"]
        fragments = ("[100, 96]", "multiples of the model's largest stride (32)")
    elif case == "batch":
        args += ["--batch", "0"]
        fragments = ("batch must be 'dynamic' or a positive integer",)
    else:
        out.mkdir(parents=True)
        fragments = ("is a folder",)
    _one_line_error(capsys, main(args), *fragments)
    if case == "out_is_folder":
        assert list(out.iterdir()) == []
    else:
        assert not out.parent.exists()


@pytest.mark.parametrize("preset", TINY)
def test_export_at_another_non_square_size(tmp_path, preset):
    # Non-square maps are where layouts go wrong (RoPE grid, AIFI position embedding, anchors, H/W).
    _, fused = tiny_models(preset, ["a", "b", "c"])
    result = export_model(fused, tmp_path / "wide.onnx", size=(64, 128), threads=1)
    assert all(r.ok for r in result.parity), [r.summary() for r in result.parity]
    detector = OnnxDetector(result.path, threads=1)
    assert detector.image_size == (64, 128) and fused.meta.image_size != (64, 128)


@pytest.mark.parametrize("variant", ["query_selection", "transformers_semantics"])
def test_other_model_variants_export_with_parity(tmp_path, variant):
    torch.manual_seed(0)
    if variant == "query_selection":  # the encoder's query-selection head is fused too
        base = build_detector(ModelConfig(preset="hgnetv2_micro"), ["a", "b", "c"])
        spread_weights(base)
        model = add_fusion(base, FusionConfig(query_selection=True), random_text_embeddings(3, TEXT_DIM, seed=1))
        with torch.no_grad():
            for head in model.fusion_heads():
                head.gate.fill_(0.5)
    else:  # enc_output kept, query position recomputed per layer, transformers' AIFI embedding
        model = build_detector(ModelConfig(preset="dinov3_micro", semantics="transformers"), ["a", "b", "c"])
        spread_weights(model)
    result = export_model(model.eval(), tmp_path / "variant.onnx", threads=1)
    assert all(r.ok for r in result.parity), [r.summary() for r in result.parity]


def test_half_export_keeps_the_labels_and_the_map_and_halves_the_file(kit, tmp_path):
    from defectfusion.commands.export import export_onnx

    full = export_onnx(kit.fused, tmp_path / "full.onnx")
    half = export_onnx(kit.fused, tmp_path / "half.onnx", half=True, check_data=kit.val_ann)
    report = half.half
    assert report.ok and report.compared > 0
    assert report.label_agreement >= 0.98 and report.max_score_diff < 0.01
    assert report.map50_fp32 is not None and abs(report.map_drop) <= 0.01
    assert (
        half.size_bytes < 0.75 * full.size_bytes
    )  # the tiny graph has more structure per weight than M (0.57 on the demo model)
    assert "label agreement" in report.summary() and "float16" in OnnxDetector(half.path).metadata["weights"]
    # a drop beyond the bound fails the export in one line and writes nothing
    with pytest.raises(export_engine.ExportError, match="float16 export refused"):
        export_onnx(kit.fused, tmp_path / "strict.onnx", half=True, check_data=kit.val_ann, max_map_drop=-1.0)
    assert not (tmp_path / "strict.onnx").exists()


def test_a_parity_failure_from_tied_query_selection_scores_says_so(kit):
    from defectfusion.engine.export.export import parity_batch, tie_hint
    from defectfusion.models.checkpoint import load_detector

    model = load_detector(kit.baseline).eval()
    images, _ = parity_batch(1, model.meta.image_size)
    assert tie_hint(model, images) == ""  # distinct scores: a real disagreement would be the export's
    head = model.model.enc_score_head
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.constant_(head.bias, -4.6)  # a class head still at its prior: every score equal
    assert "tied where its top-k cuts them" in tie_hint(model, images)
