"""`defectfusion explain`: per-class text-visual similarity maps and what each detection matched in text."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._tables import check_device, default_out, print_written, rows_table, wide_console


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="text-visual similarity maps per class, and what each detection matched in text",
        description="For an image and a fused detector: the encoder's feature maps projected by the fusion head "
        "into the text space and compared (cosine) with each class's text embedding, drawn over the image one "
        "panel per class; and for each detection the similarity of its query feature to every class text. Writes "
        "similarity_maps.png, detection_matches.png, explanation.json and similarity_maps.npz.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s); several go to OUT/<image name>/")
    p.add_argument("--checkpoint", type=Path, required=True, help="a fused detector folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: explain/<checkpoint name>)")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum score of the detections shown (0.3)")
    p.add_argument("--max-detections", type=int, default=8, help="detections explained per image (default: 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..commands.explain import explain
    from ..errors import ConfigError

    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.max_detections < 0:
        raise ConfigError(f"--max-detections must be >= 0, got {args.max_detections}")
    for image in args.images:
        if not Path(image).is_file():
            raise ConfigError(f"image {image} does not exist (explain takes image files, one map set per image)")
    out = args.out or default_out("explain", args.checkpoint)
    results = explain(
        args.checkpoint,
        args.images,
        out,
        threshold=args.threshold,
        max_detections=args.max_detections,
        device=check_device(args.device),
    )
    console = wide_console()
    files = []
    for expl, written in results:
        files += written.all()
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
        det_rows = [
            {
                "#": str(i + 1),
                "detected": d.class_name,
                "score": f"{d.score:.2f}",
                "top text matches": ", ".join(f"{n} {v:.2f}" for n, v in d.top_matches(expl.class_names, 3)),
            }
            for i, d in enumerate(expl.detections)
        ]
        if det_rows:
            console.print(rows_table(det_rows, title="what each detection matched in text"))
        else:
            console.print(f"no detections with score ≥ {expl.threshold:g}")
    print_written(console, files, out)
    return 0
