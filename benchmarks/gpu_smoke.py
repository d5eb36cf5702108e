"""One prepared check for the first GPU this project gets: does the user's setting run, and how fast.

Under 10 minutes on one card, for DEIMv2-M (DINOv3) at 1024 px, batch 4 (the user's setting), with
random weights (speed and numerics do not depend on what the weights learned):

- training steps per second, full model and phase 1 (fusion only), in bf16 and in fp16 with the
  grad scaler: non-finite losses counted, peak GPU memory;
- validation images per second (bf16 autocast, batch 4);
- fused vs base latency ratio at batch 1 in PyTorch (float32 and bf16), and with onnxruntime-gpu's
  CUDA provider when it is installed;
- the float16-weight ONNX export (``export --half``) against float32 PyTorch: label agreement;
- with two or more GPUs, after the parent has freed its GPU memory: data-parallel full steps per
  second (2 processes), and a one-epoch ``torchrun --nproc_per_node 2 -m defectfusion train`` of a
  frozen-trunk phase (phase 1, ``train.cache_frozen: on``) on synthetic images at the same size.

Each section is written to the JSON (``--out``) as soon as it is measured, atomically, and printed:
a crash or a kill keeps what was measured before it (``"finished": false`` says the run did not
end). A section that raises is recorded as ``{"error": ...}``, the next one runs, and the script
exits 1. Without CUDA it says so and exits 0; ``--device cpu`` runs every single-device code path
on the CPU with a tiny preset (what the tests do), fp16 and the CUDA provider skipped; ``--ddp on``
runs the 2-process sections there too (gloo).

Usage:  python benchmarks/gpu_smoke.py [--out gpu_smoke.json] [--steps 20] [--size 1024] [--batch 4]
        python benchmarks/gpu_smoke.py --device cpu --preset hgnetv2_micro --size 96 --batch 2 --steps 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from defectfusion.config import FusionConfig, ModelConfig, packaged_config_path
from defectfusion.data.coco import load_coco
from defectfusion.data.synthetic import generate_synthetic_dataset
from defectfusion.engine.training.amp_step import scaled_step
from defectfusion.engine.training.loss import install_deim_loss
from defectfusion.io import atomic_write_json
from defectfusion.models.checkpoint import save_detector
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
    nonfinite, skipped, times = 0, 0, []
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(steps + 2):  # 2 warm-up steps
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=amp != "off"):
            loss = model(pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            nonfinite += 1
            continue
        skipped += not scaled_step(loss, scaler, optimizer, params, grad_clip=0.1)  # the trainer's step
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "steps_per_s": 1.0 / statistics.median(times) if times else 0.0,
        "nonfinite": nonfinite,
        "scaler_skipped": skipped,  # fp16: steps the grad scaler skipped (inf/nan gradients), warm-up included
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

    from defectfusion.engine.export.export import export_model

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

    cuda = args.device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    model = fused_model(args.preset, args.size, device)
    install_deim_loss(model)
    set_trainable(model, GROUPS)
    ids = [device.index] if cuda else None
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    pixels, labels = random_batch(args.batch, args.size, seed=rank)
    pixels = pixels.to(device)
    labels = [{k: v.to(device) for k, v in t.items()} for t in labels]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    for i in range(args.steps + 2):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = net(pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    if rank == 0:
        result = {"processes": dist.get_world_size(), "steps_per_s": 1 / statistics.median(times)}
        print("DDP_RESULT " + json.dumps(result))
    dist.destroy_process_group()


def torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 ARGS``, output captured."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def failure(done: subprocess.CompletedProcess, what: str) -> RuntimeError:
    """The processes' own error lines (the CLI prints one per process), else the output's tail."""
    lines = (done.stdout + "\n" + done.stderr).strip().splitlines()
    said = list(dict.fromkeys(line for line in lines if line.startswith("error:")))
    return RuntimeError(f"{what} exited {done.returncode}:\n" + "\n".join(said or lines[-15:] or ["no output"]))


def run_ddp(args) -> dict[str, object]:
    """The bare data-parallel loop of :func:`ddp_worker` in 2 processes."""
    done = torchrun(
        __file__,
        *("--ddp-worker", "--device", args.device, "--preset", args.preset),
        *("--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)),
        timeout=300,
    )
    for printed in done.stdout.splitlines():
        if printed.startswith("DDP_RESULT "):
            return json.loads(printed[len("DDP_RESULT ") :])
    raise failure(done, "the DDP steps")


def ddp_train_config(root: Path, args) -> Path:
    """A one-epoch phase-1 run (fusion only: the trunk is frozen and cached) on synthetic images, from a
    random plain detector (phase 1 starts from a trained one: its weights do not change what runs)."""
    generate_synthetic_dataset(root / "data", train=4 * args.batch, val=2 * args.batch, size=args.size, seed=0)
    names = list(load_coco(root / "data" / "train" / "annotations.json").class_names)
    torch.manual_seed(0)
    save_detector(
        build_detector(ModelConfig(preset=args.preset, image_size=(args.size, args.size)), names), root / "start"
    )
    config = {
        "include": [str(packaged_config_path("progressive"))],
        "name": "gpu_smoke",
        "seed": 0,
        "model": {"checkpoint": str(root / "start")},
        "fusion": {"encoder": "sentence:minilm", "cache_dir": str(root / "text-cache")},
        "data": {
            "train": {"annotations": str(root / "data" / "train" / "annotations.json")},
            "val": {"annotations": str(root / "data" / "val" / "annotations.json")},
            "batch_size": args.batch,
            "num_workers": 2,
        },
        "train": {"cache_frozen": "on", "cache_dir": str(root / "cache"), "tensorboard": False, "warmup_steps": 1},
        "phases": {"phase1": {"epochs": 1, "augment": False}},
        "order": ["phase1"],
        "gates": {"phase1": None, "phase2": None},
    }
    path = root / "gpu_smoke.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def ddp_train(args) -> dict[str, object]:
    """``torchrun --nproc_per_node 2 -m defectfusion train``, one epoch of phase 1 with ``train.cache_frozen: on``."""
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = ddp_train_config(root, args)
        started = time.perf_counter()
        train = ["-m", "defectfusion", "train", str(config), "--out", str(root / "run"), "--device", device, "--quiet"]
        done = torchrun(*train, *(["--threads", "1"] if device == "cpu" else []))
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise failure(done, "torchrun -m defectfusion train")
        phase = json.loads((root / "run" / "summary.json").read_text(encoding="utf-8"))["phases"]["phase1"]
        steps = [json.loads(line)["step"] for line in (root / "run" / "phase1" / "metrics.jsonl").open()]
    return {
        "processes": 2,
        "seconds": seconds,
        "phase1_seconds": phase["seconds"],
        "epochs_run": phase["epochs_run"],
        "steps_per_process": steps[-1],
        "frozen_trunk": phase.get("frozen_trunk"),
        "map50": phase.get("last_map50"),
    }


class Sections:
    """The smoke's result, written to ``path`` after every section (atomically) and printed as it comes."""

    def __init__(self, path: Path, head: dict[str, object]):
        self.path, self.started = path, time.perf_counter()
        self.data: dict[str, object] = {**head, "finished": False}
        self.failed: list[str] = []
        self.write()

    def write(self) -> None:
        self.data["seconds"] = time.perf_counter() - self.started
        atomic_write_json(self.path, self.data)

    def add(self, name: str, value: object) -> None:
        self.data[name] = value
        self.write()
        print(line(name, value), flush=True)

    def run(self, name: str, measure: Callable[[], object]) -> None:
        """Measure one section; one that raises is recorded as its error, and the next one runs."""
        try:
            value = measure()
        except Exception as exc:  # noqa: BLE001 - a smoke test reports every failure and goes on
            traceback.print_exc()
            self.failed.append(name)
            value = {"error": f"{type(exc).__name__}: {exc}"}
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # an out-of-memory section leaves the next one room
        self.add(name, value)

    def finish(self) -> None:
        self.data["finished"] = True
        self.data["failed"] = self.failed
        self.write()


def line(key: str, value: object) -> str:
    if isinstance(value, dict):
        return f"  {key:28s} " + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
        )
    return f"  {key:28s} {value:.3g}" if isinstance(value, float) else f"  {key:28s} {value}"


def single_device(args, device: torch.device, sections: Sections) -> None:
    """Every section on one device; the model and its batch are freed when this returns."""
    model = fused_model(args.preset, args.size, device)
    pixels, labels = random_batch(args.batch, args.size)
    pixels = pixels.to(device)
    labels = [{k: v.to(device) for k, v in t.items()} for t in labels]
    amps = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    for amp in amps:
        for name, groups in (("full", GROUPS), ("phase1", ["fusion"])):
            sections.run(
                f"train_{name}_{amp}",
                lambda g=groups, a=amp: train_steps(model, g, a, pixels, labels, args.steps, device),
            )
    sizes = torch.tensor([[args.size] * 2] * args.batch, device=device)

    def validate():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(pixel_values=pixels)
        return postprocess(out.logits.float(), out.pred_boxes.float(), sizes)

    def images_per_s() -> float:
        model.eval()
        return args.batch / timed(validate, max(3, args.steps // 2), device)

    sections.run("validation_images_per_s", images_per_s)
    for amp in ("off", "bf16"):
        sections.run(f"latency_{amp}", lambda a=amp: latency_ratio(model, args.size, device, max(5, args.steps), a))
    sections.run("onnx", lambda: onnx_checks(model, args.size, device, max(5, args.steps)))


def free_gpu_memory(device: torch.device) -> dict[str, float]:
    """Release what the parent's sections left in the allocator's cache, before the 2-process runs."""
    held = torch.cuda.memory_reserved(device) / 2**30
    gc.collect()
    torch.cuda.empty_cache()
    return {"reserved_gib_before": held, "reserved_gib_after": torch.cuda.memory_reserved(device) / 2**30}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (every path, tiny settings)")
    parser.add_argument("--preset", default="dinov3_m")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per setting (after 2 warm-up)")
    parser.add_argument("--out", type=Path, default=Path("gpu_smoke.json"))
    parser.add_argument(
        "--ddp",
        choices=["auto", "on", "off"],
        default="auto",
        help="the 2-process sections: auto (with two or more GPUs), on (also on the CPU, with gloo), off",
    )
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
        atomic_write_json(args.out, {"cuda": False})
        return 0
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sections = Sections(
        args.out,
        {
            "cuda": cuda,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "torch": torch.__version__,
            "setting": f"{args.preset} at {args.size} px, batch {args.batch}",
        },
    )
    print(f"gpu smoke: {sections.data['device']}, {sections.data['setting']}, torch {torch.__version__}", flush=True)
    single_device(args, device, sections)
    two = cuda and torch.cuda.device_count() >= 2
    if args.ddp == "on" or (args.ddp == "auto" and two):
        if cuda:
            sections.run("parent_gpu_memory", lambda: free_gpu_memory(device))
        sections.run("ddp", lambda: run_ddp(args))
        sections.run("ddp_train", lambda: ddp_train(args))
    else:
        sections.add("ddp", "skipped: " + ("--ddp off" if args.ddp == "off" else "fewer than two GPUs"))
    sections.finish()
    print(f"wrote {args.out}" + (f"; failed: {', '.join(sections.failed)}" if sections.failed else ""))
    return 1 if sections.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
