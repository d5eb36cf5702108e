"""`defectfusion evaluate`: metrics of a checkpoint (or a results file) on a COCO set, with the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_threads_flag
from ._tables import check_device, default_out, print_written, rows_table, wide_console
from ._tiles import add_tile_flags, tile_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="COCO metrics, confusion matrix and report of a checkpoint (optionally vs a baseline) or a results file",
        description="Evaluate a detector on a COCO annotated set: mAP@0.5 (headline), mAP@0.5:0.95, per-class AP, "
        "precision/recall/F1, the confusion matrix with a background row and column; with --baseline, the same for "
        "the baseline on the same images and a per-class before/after/delta table with the confusable pair called "
        "out; with --descriptions, the fused model re-evaluated with other class descriptions (no retraining). "
        "Or, with --predictions, score any detector's COCO results file. Writes metrics.json and report.md/.html.",
    )
    src = p.add_argument_group("what to evaluate (a checkpoint or a results file)")
    src.add_argument("--checkpoint", type=Path, help="detector folder (or exported .onnx file)")
    src.add_argument("--predictions", type=Path, help="a COCO results file [{image_id, category_id, bbox, score}]")
    p.add_argument(
        "--data",
        "--annotations",
        dest="annotations",
        type=Path,
        help="COCO annotations json of the evaluation images (the ground truth)",
    )
    p.add_argument("--images", type=Path, default=None, help="images folder (default: beside the json)")
    p.add_argument("--baseline", type=Path, default=None, help="baseline checkpoint evaluated on the same images")
    p.add_argument(
        "--pair",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="the confusable pair to call out (default: the confusable_pair of the model's descriptions)",
    )
    p.add_argument(
        "--descriptions",
        nargs="+",
        default=[],
        metavar="FILE",
        help="what-if: description files (or packaged names) to evaluate the fused model with, compared in one table",
    )
    p.add_argument(
        "--encoder", default=None, help="text encoder for --descriptions (default: the one the model was trained with)"
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="text-embedding cache folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: evaluation/<checkpoint name>)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of the confusion matrix and P/R/F1 (default: 0.5)")
    p.add_argument("--conf", type=float, default=0.25, help="minimum score counted in the confusion matrix (0.25)")
    p.add_argument("--top-k", type=int, default=300, help="detections kept per image (default: 300)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="image-loading worker processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_threads_flag(p)
    p.add_argument("--grid", type=int, default=8, help="validation images drawn in the report (default: 8)")
    p.add_argument("--no-report", action="store_true", help="write metrics only, no report.md/.html or plots")
    add_tile_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def _check_args(args: argparse.Namespace) -> None:
    from ..errors import ConfigError

    if args.checkpoint is None and args.predictions is None:
        raise ConfigError(
            "give --checkpoint CKPT --data ANN.json, or --predictions RESULTS.json --annotations ANN.json"
        )
    if args.checkpoint is not None and args.predictions is not None:
        raise ConfigError("give either --checkpoint or --predictions, not both")
    if args.annotations is None:
        raise ConfigError("--data/--annotations ANN.json is required: the ground truth to evaluate against")
    if args.predictions is not None:
        for flag, value in (
            ("--baseline", args.baseline),
            ("--descriptions", args.descriptions),
            ("--encoder", args.encoder),
            ("--tiles", args.tiles),
        ):
            if value:
                raise ConfigError(f"{flag} needs --checkpoint (a results file has no model to run)")
    if args.encoder and not args.descriptions:
        raise ConfigError("--encoder is only used with --descriptions")
    if not 0.0 < args.iou <= 1.0:
        raise ConfigError(f"--iou must be in (0, 1], got {args.iou}")
    if not 0.0 <= args.conf <= 1.0:
        raise ConfigError(f"--conf must be in [0, 1], got {args.conf}")
    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0 or args.grid < 0:
        raise ConfigError("--top-k and --batch-size must be >= 1, --workers and --grid >= 0")


def run(args: argparse.Namespace) -> int:
    from ..commands.evaluate import evaluate_checkpoint, evaluate_predictions

    _check_args(args)
    progress = False if args.quiet else None
    if args.predictions is not None:
        out = args.out or default_out("evaluation", args.predictions)
        result = evaluate_predictions(
            args.predictions,
            args.annotations,
            images=args.images,
            out=out,
            pair=args.pair,
            iou_threshold=args.iou,
            conf_threshold=args.conf,
            grid=args.grid,
            report=not args.no_report,
        )
    else:
        out = args.out or default_out("evaluation", args.checkpoint)
        result = evaluate_checkpoint(
            args.checkpoint,
            args.annotations,
            args.images,
            baseline=args.baseline,
            descriptions=args.descriptions,
            encoder=args.encoder,
            cache_dir=args.cache_dir,
            out=out,
            pair=args.pair,
            iou_threshold=args.iou,
            conf_threshold=args.conf,
            top_k=args.top_k,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=check_device(args.device),
            **tile_options(args),
            grid=args.grid,
            report=not args.no_report,
            progress=progress,
        )
    print_result(result)
    return 0


def print_result(result) -> None:
    from ..report.compare import per_class_rows
    from ..report.values import fmt_value

    console = wide_console()
    m = result.metrics
    console.print(f"{m.num_images} images, {m.num_ground_truth} ground-truth boxes, {m.num_detections} detections")
    if result.comparison is not None:
        console.print(
            rows_table(
                result.comparison.to_display_rows(), title=f"AP per class: {result.labels[0]} vs {result.labels[1]}"
            )
        )
    else:
        console.print(rows_table(per_class_rows(m, result.class_names), title="metrics per class"))
    headline = f"mAP@0.5 {fmt_value(m.map50)}, mAP@0.5:0.95 {fmt_value(m.map)}"
    if result.baseline is not None:
        headline += (
            f" (baseline: mAP@0.5 {fmt_value(result.baseline.map50)}, mAP@0.5:0.95 {fmt_value(result.baseline.map)})"
        )
    console.print(headline)
    undefined = [n for n in result.class_names if m.ap50_of(n) is None]
    if undefined:
        console.print(f"undefined (no ground truth here, shown as –): {', '.join(undefined)}")
    if result.confusion is not None:
        console.print(result.confusion.sentence())
        console.print(result.confusion.reverse_sentence())
    if result.what_if:
        console.print(
            rows_table(
                what_if_display(result),
                title=f"what-if descriptions (same detector, other texts; as trained: mAP@0.5 {fmt_value(m.map50)})",
            )
        )
    if result.out is not None:
        print_written(console, result.files, result.out)
        if result.report_html is not None:
            console.print(f"report: {result.report_html}")


def what_if_display(result) -> list[dict[str, str]]:
    from ..report.values import fmt_delta, fmt_value

    rows = []
    for row in result.what_if_rows():
        shown = {
            "descriptions": row["descriptions"],
            "mAP@0.5": fmt_value(row["map50"]),
            "Δ vs as trained": fmt_delta(row["map50_delta"]),
        }
        if result.pair is not None:
            a, b = result.pair
            shown[f"AP@0.5 {a}"] = fmt_value(row[f"ap50_{a}"])
            shown[f"AP@0.5 {b}"] = fmt_value(row[f"ap50_{b}"])
            shown[f"{a} → {b}"] = str(row[f"{a}_as_{b}"])
            shown[f"{b} → {a}"] = str(row[f"{b}_as_{a}"])
        rows.append(shown)
    return rows
