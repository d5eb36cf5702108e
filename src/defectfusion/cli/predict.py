"""`defectfusion predict`: detections on images -> COCO results json + images with boxes drawn."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_threads_flag
from ._tables import check_device, default_out, print_written, rows_table, wide_console
from ._tiles import add_tile_flags, tile_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="detect defects in images; write COCO results json and the images with boxes drawn",
        description="Run a detector (folder, or exported .onnx) on image files, folders or glob patterns. Writes "
        "results.json (COCO results), predictions.json (per image, with class names) and images/ with boxes, class "
        "names and scores drawn. Only detections with score >= --threshold are kept (use --threshold 0 for a "
        "results file meant for mAP).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns (quoted)")
    p.add_argument("--checkpoint", type=Path, required=True, help="detector folder (or exported .onnx file)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: predictions/<checkpoint name>)")
    p.add_argument("--threshold", type=float, default=0.25, help="minimum score of a detection (default: 0.25)")
    p.add_argument("--top-k", type=int, default=300, help="detections considered per image (default: 300)")
    ids = p.add_mutually_exclusive_group()
    ids.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="COCO json of these images: its category ids (by class name) and image ids (by file name)",
    )
    ids.add_argument(
        "--category-ids",
        default=None,
        help="comma-separated COCO category id of each class, in class order (default: the class index)",
    )
    p.add_argument("--recursive", action="store_true", help="also take images in subfolders of folder inputs")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="image-loading worker processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_threads_flag(p)
    p.add_argument("--no-draw", action="store_true", help="do not write the images with boxes")
    p.add_argument(
        "--nms",
        type=float,
        default=None,
        metavar="IOU",
        help="merge overlapping duplicates of a class (class-wise NMS at this IoU); off by default: mAP files "
        "should keep them",
    )
    add_tile_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _category_ids(text: str | None) -> list[int] | None:
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--category-ids must be comma-separated integers (e.g. 1,2,3), got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..commands.predict import predict
    from ..errors import ConfigError

    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--top-k and --batch-size must be >= 1, --workers >= 0")
    if args.nms is not None and not 0 < args.nms <= 1:
        raise ConfigError(f"--nms takes an IoU in (0, 1], got {args.nms}")
    out = args.out or default_out("predictions", args.checkpoint)
    result = predict(
        args.checkpoint,
        args.images,
        out,
        threshold=args.threshold,
        top_k=args.top_k,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=check_device(args.device),
        recursive=args.recursive,
        annotations=args.annotations,
        category_ids=_category_ids(args.category_ids),
        draw=not args.no_draw,
        nms=args.nms,
        progress=False if args.quiet else None,
        **tile_options(args),
    )
    print_result(result)
    return 0


def print_result(result, limit: int = 20) -> None:
    console = wide_console()
    rows = []
    for pred in result.predictions[:limit]:
        det = pred.detections
        best = ", ".join(
            f"{result.class_names[lab]} {s:.2f}"
            for lab, s in zip(det.labels.tolist()[:3], det.scores.tolist()[:3], strict=True)
        )
        rows.append(
            {
                "image": pred.path.name,
                "id": str(pred.image_id),
                "size": f"{pred.size[1]}x{pred.size[0]}",
                "detections": str(len(det)),
                "best": best or "–",
            }
        )
    title = f"detections with score ≥ {result.threshold:g}"
    if len(result.predictions) > limit:
        title += f" (first {limit} of {len(result.predictions)} images)"
    console.print(rows_table(rows, title=title, numeric={"id", "detections"}))
    counts = result.counts_per_class()
    console.print(
        rows_table(
            [{"class": n, "detections": str(c)} for n, c in counts.items()],
            title=f"{result.num_detections} detections in {len(result.predictions)} images",
        )
    )
    if result.out is not None:
        files = [result.results_json, result.predictions_json, *result.drawn]
        print_written(console, [f for f in files if f is not None], result.out, limit=4)
