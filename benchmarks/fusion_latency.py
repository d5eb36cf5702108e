"""What the text fusion costs at inference: base detector vs fused detector, measured side by side.

For each setting the script builds one random-init detector (the base), a fused copy with the
same weights (``add_fusion``, gates set to 0.5 so the fusion really computes: projection,
normalisation and the matmul with the 6 x 512 text embeddings), and times batch-1 inference

- in PyTorch: eval mode, ``torch.inference_mode()``, forward + the original post-processor
  (what ``defectfusion predict`` runs);
- in onnxruntime: both models exported with ``defectfusion.engine.export.export.export_model`` (which
  checks each graph against PyTorch before it is used here).

Runs are interleaved in pairs (base then fused, then fused then base, ...) after a warm-up, for
a time budget, so drift and other load on the machine hit both alike. Each run is timed on two
clocks: the wall clock (latency on an idle machine) and the process CPU clock (what the run
computed; with one intra-op thread both runtimes compute on the calling thread). On a shared
machine the wall clock also counts the time other jobs hold the core, and even CPU time moves by
a few percent with their cache and memory traffic: two identical models then differ by up to
5% in median CPU time and 20% in median wall time (``--control`` measures this floor). So the
ratio line is the median over pairs of fused/base CPU time, the estimate least moved by the
noise. It prints the median latencies on both clocks and one line per setting and backend:

    M@640 pytorch fused/base ratio=<x>

plus, as a cross-check, the cost of the fused class head alone against the plain projection.

Usage:  python benchmarks/fusion_latency.py [--budget 120] [--threads 1] [--skip-m] [--skip-onnx] [--control]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.postprocess import postprocess

CLASSES = ["NORMAL", "DEFORMACIONES", "ROTURA_FRACTURA", "RAYONES_ARANAZOS", "PERFORACIONES", "CONTAMINACION"]
TEXT_DIM = 512  # CLIP ViT-B/32, the seed's default text encoder
SETTINGS = [("M@640", "dinov3_m", 640), ("demo@256", "dinov3_demo", 256)]


def build_pair(preset: str, size: int):
    """(base, fused) with the same weights, both freshly allocated copies.

    The model built first is not timed: at 640 px a model's first allocation ran ~2% slower than
    a copy of it (memory placement), which would favour whichever model came second.
    """
    torch.manual_seed(0)
    original = build_detector(ModelConfig(preset=preset, image_size=(size, size)), CLASSES).eval()
    fused = add_fusion(original, FusionConfig(), random_text_embeddings(len(CLASSES), TEXT_DIM, seed=1)).eval()
    with torch.no_grad():
        for head in fused.fusion_heads():
            head.gate.fill_(0.5)
    return copy.deepcopy(original).eval(), fused


def torch_runner(model: torch.nn.Module, images: torch.Tensor, sizes: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            out = model(pixel_values=images)
            return postprocess(out.logits, out.pred_boxes, sizes)

    return run


def onnx_runner(path: Path, images: torch.Tensor, sizes: torch.Tensor, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"images": images.numpy(), "orig_target_sizes": sizes.numpy()}
    return lambda: session.run(None, feeds)


def interleaved(
    base: Callable[[], object], fused: Callable[[], object], budget: float, min_pairs: int, max_pairs: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Pairs of runs, base/fused then fused/base, ..., until ``budget`` seconds (within the pair limits).

    Returns ``{clock: {"base": [...], "fused": [...]}}`` for the wall clock and the process CPU clock;
    entry ``i`` of both lists is one pair, run back to back.
    """
    for _ in range(warmup):
        base(), fused()
    times: dict[str, dict[str, list[float]]] = {"wall": {"base": [], "fused": []}, "cpu": {"base": [], "fused": []}}
    start = time.perf_counter()
    i = 0
    while i < min_pairs or (i < max_pairs and time.perf_counter() - start < budget):
        order = [("base", base), ("fused", fused)]
        for name, run in order if i % 2 == 0 else order[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            times["cpu"][name].append(time.process_time() - cpu)
            times["wall"][name].append(time.perf_counter() - wall)
        i += 1
    return times


def report(label: str, backend: str, times: dict[str, dict[str, list[float]]], second: str = "fused") -> float:
    """Median latencies on both clocks; the ratio line: the median over pairs of fused/base CPU time."""
    ratios = {}
    for clock in ("wall", "cpu"):
        base, fused = times[clock]["base"], times[clock]["fused"]
        b, f = statistics.median(base), statistics.median(fused)
        ratios[clock] = statistics.median(x / y for x, y in zip(fused, base, strict=True))
        low, high = statistics.quantiles(base, n=4)[0::2]
        print(
            f"{label} {backend} [{clock}, {len(base)} pairs]: median base {b * 1e3:.1f} ms, {second} {f * 1e3:.1f} ms "
            f"(ratio of medians {f / b:.3f}; base quartiles {low * 1e3:.1f}..{high * 1e3:.1f} ms; "
            f"median of paired ratios {ratios[clock]:.3f})"
        )
    print(f"{label} {backend} {second}/base ratio={ratios['cpu']:.3f}")
    return ratios["cpu"]


def head_cost(model: torch.nn.Module, iters: int = 50) -> tuple[float, float]:
    """CPU seconds per image of the fused class head vs the plain class projection, on ``[1, Q, d]``."""
    head = model.model.decoder.class_embed[model.model.decoder.eval_idx]
    features = torch.randn(1, model.config.num_queries, model.config.d_model)
    plain = torch.nn.Linear(head.in_features, head.out_features)
    costs = []
    with torch.inference_mode():
        for module in (plain, head):
            for _ in range(5):
                module(features)
            start = time.process_time()
            for _ in range(iters):
                module(features)
            costs.append((time.process_time() - start) / iters)
    return costs[0], costs[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget", type=float, default=120.0, help="seconds of timed pairs per setting and backend (default: 120)"
    )
    parser.add_argument("--min-pairs", type=int, default=10, help="at least this many pairs, whatever the budget")
    parser.add_argument("--max-pairs", type=int, default=300, help="at most this many pairs")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--skip-m", action="store_true", help="only the demo size (the M export takes minutes)")
    parser.add_argument("--skip-onnx", action="store_true", help="PyTorch only")
    parser.add_argument(
        "--control",
        action="store_true",
        help="also time the base against an identical copy of itself: the noise floor of the ratio",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch 1; interleaved pairs for {args.budget:.0f} s "
        f"({args.min_pairs}..{args.max_pairs} pairs) after {args.warmup} warm-up pairs"
    )
    pairs = (args.budget, args.min_pairs, args.max_pairs, args.warmup)
    settings = [s for s in SETTINGS if not (args.skip_m and s[1] == "dinov3_m")]
    with tempfile.TemporaryDirectory() as tmp:
        for label, preset, size in settings:
            base, fused = build_pair(preset, size)
            images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
            sizes = torch.tensor([[size, size]])
            times = interleaved(torch_runner(base, images, sizes), torch_runner(fused, images, sizes), *pairs)
            report(label, "pytorch", times)
            plain, head = head_cost(fused)
            share = (head - plain) / statistics.median(times["cpu"]["base"])
            print(
                f"{label} fused class head alone: {head * 1e3:.2f} ms vs {plain * 1e3:.2f} ms for the plain projection "
                f"({fused.config.num_queries} queries, d={fused.config.d_model}, text {TEXT_DIM}-d): "
                f"+{share * 100:.2f}% of the base forward"
            )
            if args.control:
                twin = copy.deepcopy(base).eval()
                control = interleaved(torch_runner(base, images, sizes), torch_runner(twin, images, sizes), *pairs)
                report(f"{label} control", "pytorch", control, second="copy")
            if args.skip_onnx:
                continue
            from defectfusion.engine.export.export import export_model

            paths = {}
            for name, model in (("base", base), ("fused", fused)):
                start = time.perf_counter()
                result = export_model(model, Path(tmp) / f"{preset}_{name}.onnx", threads=args.threads)
                checks = "; ".join(r.summary() for r in result.parity)
                print(
                    f"{label} exported {name} in {time.perf_counter() - start:.0f} s, onnxruntime = PyTorch: {checks}"
                )
                paths[name] = result.path
            times = interleaved(
                onnx_runner(paths["base"], images, sizes, args.threads),
                onnx_runner(paths["fused"], images, sizes, args.threads),
                *pairs,
            )
            report(label, "onnxruntime", times)


if __name__ == "__main__":
    main()
