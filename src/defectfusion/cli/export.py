"""`defectfusion export`: a detector folder -> one ONNX file with the text baked in, checked by onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_threads_flag, console_out


def register(sub: argparse._SubParsersAction) -> None:
    from ..engine.export.export import DEFAULT_OPSET, DEFAULT_TOP_K, MAX_OPSET, MIN_OPSET

    p = sub.add_parser(
        "export",
        help="export a detector to ONNX (text embeddings baked in, post-processing included)",
        description="Trace the detector at a fixed input size into an ONNX graph: inputs images [B,3,H,W] (normalised) "
        "and orig_target_sizes [B,2] as (H, W); outputs labels, boxes (xyxy pixels of the original image) and scores "
        "after top-k. Class names, input size and normalisation go into the ONNX metadata. The file is written only "
        "after onnxruntime's detections on a test batch match PyTorch's.",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="detector folder (config.json + model.safetensors)")
    p.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    p.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=None,
        help="input size of the graph (default: the model's); multiples of the model's largest stride",
    )
    p.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default: {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"detections per image in the outputs (default: {DEFAULT_TOP_K})",
    )
    add_threads_flag(p)  # also the onnxruntime threads of the parity check
    p.add_argument(
        "--half", action="store_true", help="float16 weights (half the file; float32 inputs, outputs and arithmetic)"
    )
    p.add_argument(
        "--check-data",
        type=Path,
        default=None,
        metavar="COCO_JSON",
        help="with --half: mAP@0.5 of the float16 graph vs the float32 model on these images",
    )
    p.add_argument(
        "--max-map-drop", type=float, default=0.01, help="with --half: the largest mAP@0.5 drop accepted (0.01)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..commands.export import export_onnx
    from ..errors import ConfigError

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.check_data is not None and not args.half:
        raise ConfigError("--check-data scores the float16 export: give --half too")
    if args.check_data is not None and not args.check_data.is_file():
        raise ConfigError(f"--check-data {args.check_data} does not exist (a COCO json)")
    if not 0 <= args.max_map_drop <= 1:
        raise ConfigError(f"--max-map-drop must be in [0, 1], got {args.max_map_drop}")
    result = export_onnx(
        args.checkpoint,
        args.out,
        size=args.size,
        batch=args.batch,
        opset=args.opset,
        top_k=args.top_k,
        threads=args.compute_threads,
        half=args.half,
        check_data=args.check_data,
        max_map_drop=args.max_map_drop,
    )
    console = console_out()
    height, width = result.image_size
    console.print(
        f"images: float32 [{'B' if result.batch == 'dynamic' else result.batch}, 3, {height}, {width}] "
        f"normalised (mean {result.metadata['image_mean']}, std {result.metadata['image_std']}); "
        f"orig_target_sizes: int64 [B, 2] as (H, W)"
    )
    console.print(
        f"outputs: labels, boxes (x1, y1, x2, y2 pixels), scores; top {result.top_k} per image; opset {result.opset}"
    )
    kind = "fused (text embeddings baked in)" if result.fused else "base (no fusion head)"
    console.print(f"classes ({len(result.class_names)}): {', '.join(result.class_names)}; {kind}")
    for report in result.parity:
        console.print(f"onnxruntime = PyTorch: {report.summary()}")
    if result.half is not None:
        console.print(result.half.summary())
    console.print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB) in {result.seconds:.1f} s")
    return 0
