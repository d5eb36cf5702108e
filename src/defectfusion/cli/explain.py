"""`defectfusion explain`: why each box got its class (maps, numbers); with annotations, how well the maps localise."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_threads_flag
from ._tables import check_device, default_out, print_written, rows_table, wide_console
from ._tiles import add_tile_flags, tile_options

DETAIL_IMAGES = 3  # images whose per-detection tables are printed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="why each detection got its class: attribution maps, text matches, the logit's terms; map quality",
        description="For images and a fused detector: per class and per detection, maps of what raised the class "
        "score (gradients on the encoder's features and on the pixels), where the detections looked (the decoder's "
        "sampling points), the text similarity per pixel; each detection's logit split into the detector's own term, "
        "the text term and the LQE term, its best text matches and, for the confusable pair, the margin and how "
        "much of it came from the text. With --annotations, every map kind is scored against the boxes (pointing "
        "game, AUROC) beside a control that knows only the detections (their boxes as blobs), each class's map "
        "against the other classes' boxes, and with --faithfulness N the deletion/insertion test on N images "
        "(does removing what a map ranks first lower the detection's score faster than removing its box?); "
        "OUT/report.html shows the tables and the best and worst examples.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", type=Path, required=True, help="a fused detector folder")
    p.add_argument(
        "--annotations", type=Path, default=None, help="a COCO json: explain its images and score the maps on its boxes"
    )
    p.add_argument("--images-dir", type=Path, default=None, help="images folder of --annotations (default: beside it)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: explain/<checkpoint name>)")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum score of the detections shown (0.3)")
    p.add_argument("--max-detections", type=int, default=8, help="detections explained per image (default: 8)")
    p.add_argument("--limit", type=int, default=None, help="explain at most N images (the first ones)")
    p.add_argument(
        "--pair",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="the confusable pair (default: the model's descriptions' confusable_pair)",
    )
    p.add_argument("--tolerance", type=float, default=15.0, help="pointing-game tolerance in pixels (default: 15)")
    p.add_argument(
        "--all-figures", action="store_true", help="several images: also the similarity-map and text-match figures"
    )
    p.add_argument("--save-maps", action="store_true", help="several images: also every map as .npz (MBs per image)")
    p.add_argument(
        "--faithfulness",
        type=int,
        default=0,
        metavar="N",
        help="with --annotations: the deletion/insertion test on the first N images' detailed detections "
        "(a few hundred forward passes each; default 0: not run, and the report says so)",
    )
    p.add_argument("--steps", type=int, default=8, help="pixel-fraction steps of the faithfulness test (default: 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_threads_flag(p)
    add_tile_flags(p)
    p.set_defaults(handler=run)


def _check(args: argparse.Namespace) -> None:
    from ..errors import ConfigError

    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.max_detections < 0:
        raise ConfigError(f"--max-detections must be >= 0, got {args.max_detections}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    if args.tolerance < 0:
        raise ConfigError(f"--tolerance must be >= 0 pixels, got {args.tolerance}")
    if args.faithfulness < 0 or args.steps < 1:
        raise ConfigError(f"--faithfulness must be >= 0 and --steps >= 1, got {args.faithfulness} and {args.steps}")
    if args.annotations is not None:
        if args.images:
            raise ConfigError("give either IMAGE arguments or --annotations (whose images are explained), not both")
        if not args.annotations.is_file():
            raise ConfigError(f"--annotations {args.annotations} does not exist (a COCO json)")
    elif not args.images:
        raise ConfigError("nothing to explain: give image files, folders or patterns, or --annotations COCO.json")
    else:
        for image in args.images:
            path = Path(image)
            if not path.exists() and not any(ch in str(image) for ch in "*?["):
                raise ConfigError(f"image {image} does not exist (explain takes image files, folders or patterns)")


def _detection_rows(expl) -> list[dict[str, str]]:
    rows = []
    for i, d in enumerate(expl.detections):
        p = d.logit_parts
        row = {
            "#": str(i + 1),
            "detected": d.class_name,
            "score": f"{d.score:.2f}",
            "logit = base + text + LQE": f"{p['logit']:+.2f} = {p['base']:+.2f} {p['text']:+.2f} {p['quality']:+.2f}",
            "gate": f"{p['gate']:.3f}",
            "top text matches": ", ".join(f"{n} {v:.2f}" for n, v in d.top_matches(expl.class_names, 3)),
        }
        m = d.pair_margin
        row["vs the look-alike"] = (
            f"{m['margin']:+.2f} over {m['against']} (text {m['text']:+.2f}, base {m['base']:+.2f})" if m else ""
        )
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    from ..commands.explain import explain
    from ..errors import ConfigError

    _check(args)
    tiles = tile_options(args)
    if tiles["full_image"]:
        raise ConfigError("explain --tiles explains the tiles only: drop --full-image (or explain without --tiles)")
    out = args.out or default_out("explain", args.checkpoint)
    result = explain(
        args.checkpoint,
        args.images or None,
        out,
        annotations=args.annotations,
        images_dir=args.images_dir,
        threshold=args.threshold,
        max_detections=args.max_detections,
        device=check_device(args.device),
        pair=args.pair,
        limit=args.limit,
        tolerance=args.tolerance,
        all_figures=args.all_figures,
        save_maps=args.save_maps,
        tiles=tiles["tiles"],
        overlap=tiles["overlap"],
        faithfulness=args.faithfulness,
        steps=args.steps,
    )
    console = wide_console()
    for item in result.images[:DETAIL_IMAGES]:
        expl = item.explanation
        console.print(f"[bold]{expl.source}[/bold] ({expl.size[1]}x{expl.size[0]})")
        console.print(f"maps: {expl.map_head} — {expl.map_head_note}")
        console.print(f"detections: query features projected by {expl.query_head}")
        data = expl.to_json()["maps"]
        rows = [
            {
                "class": n,
                "max": f"{v['max']:.3f}",
                "mean": f"{v['mean']:.3f}",
                "best match on": f"{100 * data['best_class_share'][n]:.0f}%",
            }
            for n, v in data["per_class"].items()
        ]
        console.print(rows_table(rows, title="similarity maps (cosine)"))
        if expl.detections:
            console.print(rows_table(_detection_rows(expl), title="what each detection matched in text"))
        else:
            console.print(f"no detections with score ≥ {expl.threshold:g}")
    if len(result.images) > DETAIL_IMAGES:
        console.print(f"... and {len(result.images) - DETAIL_IMAGES} more images (their files are in {out}/)")
    if result.quality:
        from ..report.explain_summary import quality_rows

        kinds = result.images[0].explanation.map_kinds if result.images else {}
        shown = ("map kind", "pointing game", "AUROC (0.5: none)", "faithfulness", "reads as")  # the page: the rest
        rows = [
            {k: v.replace("**", "") for k, v in r.items() if k in shown}
            for r in quality_rows(
                result.quality,
                result.chosen_kind,
                kinds,
                result.comparisons,
                result.faithfulness.to_dict()["kinds"] if result.faithfulness else None,
            )
        ]
        console.print(rows_table(rows, title=f"how well the maps point at the boxes ({len(result.images)} images)"))
        console.print(f"default map kind: {result.chosen_why}" if result.chosen_kind else result.chosen_why)
    print_written(console, result.files(), out)
    if result.summary:
        console.print(f"summary: {result.summary.html}")
    return 0
