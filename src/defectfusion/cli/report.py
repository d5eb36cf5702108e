"""`defectfusion report`: the report of a training run (phases vs baseline, gates, curves, final model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_threads_flag
from ._tables import check_device, print_written, rows_table, wide_console


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="report of a training run: phases vs baseline, gate decisions, training curves, final model metrics",
        description="Build report.md/.html for a run folder written by `defectfusion train`. Metrics of the final "
        "model and the baseline come from their metrics.json; a checkpoint without one is evaluated on the run's "
        "validation set (data.val of its config.yaml).",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder (train --out)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: RUN_DIR/report)")
    p.add_argument("--pair", nargs=2, metavar=("A", "B"), default=None, help="the confusable pair to call out")
    p.add_argument("--grid", type=int, default=8, help="validation images drawn with predictions (default: 8)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_threads_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..commands.report_run import report_run
    from ..errors import ConfigError
    from ..report.values import fmt_value

    if args.grid < 0 or args.batch_size < 1:
        raise ConfigError("--grid must be >= 0 and --batch-size >= 1")
    rep = report_run(
        args.run_dir,
        args.out,
        pair=args.pair,
        device=check_device(args.device),
        batch_size=args.batch_size,
        grid=args.grid,
    )
    console = wide_console()
    console.print(
        rows_table(
            rep.phase_rows,
            title=f"run {rep.summary.get('name', rep.run.name)}: phases",
            numeric={"epochs", "best epoch", "mAP@0.5", "mAP@0.5:0.95", "Δ mAP@0.5", "time"},
        )
    )
    if rep.gate_rows:
        console.print(rows_table(rep.gate_rows, title="gate decisions", numeric={"value"}))
    console.print(rep.final_text.replace("**", "").replace("`", ""))
    result = rep.result
    if result.comparison is not None:
        console.print(rows_table(result.comparison.to_display_rows(("ap50",)), title="final model vs baseline"))
    else:
        console.print(f"final model: mAP@0.5 {fmt_value(result.metrics.map50)}")
    if result.confusion is not None:
        console.print(result.confusion.sentence())
        console.print(result.confusion.reverse_sentence())
    for e in rep.evaluated:
        console.print(f"evaluated now (no metrics.json): {e}")
    print_written(console, result.files, result.out)
    if result.report_html is not None:
        console.print(f"report: {result.report_html}")
    return 0
