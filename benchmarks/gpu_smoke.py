"""One prepared check for the first GPU this project gets: does the user's setting run, and how fast.

Under 10 minutes on one card, for DEIMv2-M (DINOv3) at 1024 px, batch 4 (the user's setting), with
random weights (speed and numerics do not depend on what the weights learned):

- training steps per second, full model and phase 1 (fusion only), in bf16 and in fp16 with the
  grad scaler: non-finite losses counted, peak GPU memory;
- validation images per second (bf16 autocast, batch 4);
- fused vs base latency ratio at batch 1 in PyTorch (float32 and bf16), and with onnxruntime-gpu's
  CUDA provider when it is installed;
- the float16-weight ONNX export (``export --half``) against float32 PyTorch: label agreement;
- with two or more GPUs, data-parallel full steps per second through torchrun (2 processes).

It prints one table and writes it as JSON (``--out``). Without CUDA it says so and exits 0;
``--device cpu`` runs every code path on the CPU with a tiny preset (what the tests do), fp16 and
the CUDA provider skipped.

Usage:  python benchmarks/gpu_smoke.py [--out gpu_smoke.json] [--steps 20] [--size 1024] [--batch 4]
        python benchmarks/gpu_smoke.py --device cpu --preset hgnetv2_micro --size 96 --batch 2 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.engine.loss import install_deim_loss
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.groups import GROUPS, set_trainable
from defectfusion.models.postprocess import postprocess

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phase_step_cost import CLASSES, random_batch  # noqa: E402

TEXT_DIM = 512  # CLIP ViT-B/32's projection width


def fused_model(preset: str, size: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    base = build_detector(ModelConfig(preset=preset, image_size=(size, size)), CLASSES)
    model = add_fusion(base, FusionConfig(), random_text_embeddings(len(CLASSES), TEXT_DIM, seed=0))
    with torch.no_grad():
        for head in model.fusion_heads():
            head.gate.fill_(0.1)  # open: the fusion computes and backpropagates
    return model.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(model, groups, amp: str, pixels, labels, steps: int, device) -> dict[str, float | int]:
    """Steps per second of ``groups`` trainable, with the autocast ``amp`` (bf16 | fp16 | off)."""
    set_trainable(model, groups)
    install_deim_loss(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    nonfinite, times = 0, []
    for i in range(steps + 2):  # 2 warm-up steps
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=amp != "off"):
            loss = model(pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            nonfinite += 1
            continue
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "steps_per_s": 1.0 / statistics.median(times) if times else 0.0,
        "nonfinite": nonfinite,
        "peak_gib": peak,
    }


@torch.inference_mode()
def timed(run, iters: int, device) -> float:
    for _ in range(2):
        run()
    values = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def latency_ratio(model, size: int, device, iters: int, amp: str) -> dict[str, float]:
    """Median latency of the fused model and of the same weights with the gates at 0 and no fusion."""
    from defectfusion.models.detector import DefectDetector

    base = DefectDetector(
        type(model.config).from_dict(
            {**model.config.to_dict(), "defectfusion": {**model.config.defectfusion, "fusion": None}}
        )
    )
    base.load_state_dict({k: v for k, v in model.state_dict().items() if ".fusion." not in k})
    base = base.to(device).eval()
    model.eval()
    x = torch.randn(1, 3, size, size, device=device)
    sizes = torch.tensor([[size, size]], device=device)

    def runner(m):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                out = m(pixel_values=x)
            return postprocess(out.logits.float(), out.pred_boxes.float(), sizes)

        return run

    fused_s, base_s = timed(runner(model), iters, device), timed(runner(base), iters, device)
    return {"base_ms": 1000 * base_s, "fused_ms": 1000 * fused_s, "ratio": fused_s / base_s}


def onnx_checks(model, size: int, device, iters: int) -> dict[str, object]:
    """float16-weight export vs float32 PyTorch, and CUDA-provider latency when onnxruntime-gpu is there."""
    import onnxruntime as ort

    from defectfusion.engine.export import export_model

    out: dict[str, object] = {}
    cpu_model = model.to("cpu").eval()
    with tempfile.TemporaryDirectory() as tmp:
        result = export_model(cpu_model, Path(tmp) / "half.onnx", size=(size, size), half=True, batch=1)
        out["fp16_export"] = result.half.summary()
        out["fp16_label_agreement"] = result.half.label_agreement
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            full = export_model(cpu_model, Path(tmp) / "fused.onnx", size=(size, size), batch=1, check=False)
            session = ort.InferenceSession(str(full.path), providers=["CUDAExecutionProvider"])
            feeds = {"images": torch.randn(1, 3, size, size).numpy(), "orig_target_sizes": [[size, size]]}
            feeds["orig_target_sizes"] = torch.tensor(feeds["orig_target_sizes"]).numpy()
            out["onnx_cuda_fused_ms"] = 1000 * timed(lambda: session.run(None, feeds), iters, torch.device("cpu"))
        else:
            out["onnx_cuda"] = "onnxruntime-gpu's CUDAExecutionProvider not available: skipped"
    model.to(device)
    return out


def ddp_worker(args) -> None:
    """One torchrun process: data-parallel full steps per second (printed by rank 0 as JSON)."""
    import torch.distributed as dist

    dist.init_process_group("nccl")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    model = fused_model(args.preset, args.size, device)
    install_deim_loss(model)
    set_trainable(model, GROUPS)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index], find_unused_parameters=True)
    pixels, labels = random_batch(args.batch, args.size, seed=rank)
    pixels = pixels.to(device)
    labels = [{k: v.to(device) for k, v in t.items()} for t in labels]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    for i in range(args.steps + 2):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = net(pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    if rank == 0:
        print("DDP_RESULT " + json.dumps({"gpus": dist.get_world_size(), "steps_per_s": 1 / statistics.median(times)}))
    dist.destroy_process_group()


def run_ddp(args) -> dict[str, object]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        __file__,
        "--ddp-worker",
        "--preset",
        args.preset,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("DDP_RESULT "):
            return json.loads(line[len("DDP_RESULT ") :])
    return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (every path, tiny settings)")
    parser.add_argument("--preset", default="dinov3_m")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per setting (after 2 warm-up)")
    parser.add_argument("--out", type=Path, default=Path("gpu_smoke.json"))
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "no CUDA device on this machine: nothing measured (this script is for the first GPU; --device cpu runs "
            "its code paths here)"
        )
        args.out.write_text(json.dumps({"cuda": False}) + "\n")
        return 0
    device = torch.device(args.device)
    started = time.perf_counter()
    result: dict[str, object] = {
        "cuda": device.type == "cuda",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "setting": f"{args.preset} at {args.size} px, batch {args.batch}",
    }
    model = fused_model(args.preset, args.size, device)
    pixels, labels = random_batch(args.batch, args.size)
    pixels = pixels.to(device)
    labels = [{k: v.to(device) for k, v in t.items()} for t in labels]
    amps = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    for amp in amps:
        for name, groups in (("full", GROUPS), ("phase1", ["fusion"])):
            result[f"train_{name}_{amp}"] = train_steps(model, groups, amp, pixels, labels, args.steps, device)

    def validate():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(pixel_values=pixels)
        return postprocess(out.logits.float(), out.pred_boxes.float(), torch.tensor([[args.size] * 2] * args.batch))

    model.eval()
    result["validation_images_per_s"] = args.batch / timed(validate, max(3, args.steps // 2), device)
    for amp in ("off", "bf16"):
        result[f"latency_{amp}"] = latency_ratio(model, args.size, device, max(5, args.steps), amp)
    result.update(onnx_checks(model, args.size, device, max(5, args.steps)))
    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        result["ddp"] = run_ddp(args)
    result["seconds"] = time.perf_counter() - started

    print(f"gpu smoke: {result['device']}, {result['setting']}, torch {result['torch']}")
    for key, value in result.items():
        if isinstance(value, dict):
            print(
                f"  {key:28s} "
                + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
            )
        elif key not in ("device", "setting", "torch"):
            print(f"  {key:28s} {value:.3g}" if isinstance(value, float) else f"  {key:28s} {value}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
