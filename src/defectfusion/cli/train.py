"""`defectfusion train`: the baseline, one phase, or the whole progressive unfreezing."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._shorthand import add_shorthand_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the baseline, one phase or all phases with their gates",
        description="Train from a YAML config (a path or a packaged name: baseline, scratch_cpu, scratch_gpu, "
        "phase1_warmup, phase2_head, phase3_full, progressive, progressive_relative, option1_fusion_only, "
        "option2_from_scratch). Works unchanged under "
        "`torchrun --nproc_per_node N` or `accelerate launch` (data-parallel).",
    )
    p.add_argument("config", nargs="?", help="config file or packaged name (optional with --resume: the run's own)")
    p.add_argument(
        "--phase",
        default="all",
        help="baseline | 1 | 2 | 3 | a phase name | all (default: the config's order); on a run folder that holds "
        "a run: train that phase from the previous phase's best, past its gate (recorded in summary.json)",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its last checkpoint")
    p.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. -o data.batch_size=8 (repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--go-past-gate",
        action="append",
        default=[],
        metavar="PHASE",
        help="with --resume: go on although the gate after PHASE stopped the run (recorded in summary.json)",
    )
    add_shorthand_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..commands.train import train
    from ..errors import ConfigError

    if args.config is None and not (args.out and (args.resume or (args.out / "config.yaml").is_file())):
        raise ConfigError("give a config (e.g. `defectfusion train progressive ...`), or --resume --out RUN_DIR")
    from ..commands.shorthand import overrides_from_args

    overrides = overrides_from_args(
        args, "shorthand flags change the config: a resumed run keeps its own (-o is refused too)"
    )
    if args.go_past_gate and not args.resume:
        raise ConfigError("--go-past-gate continues a run that a gate stopped: give --resume --out RUN too")
    result = train(
        args.config,
        args.out,
        phase=args.phase,
        resume=args.resume,
        overrides=overrides,
        progress=not args.quiet,
        go_past=args.go_past_gate,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, one process reports
        return 0
    final = result.summary.get("final") or {}
    print(f"run folder: {result.out}")
    for gate in result.summary.get("gates") or []:
        if not gate.get("proceed") and gate.get("go_on"):
            print(f"stopped at the gate after {gate['after']}: {gate['reason']}")
            print(f"to go on anyway (your decision, recorded in summary.json): {gate['go_on']}")
    if final:
        from ..structures import Scored

        print(f"final model: {final['checkpoint']} ({final['phase']}, val mAP@0.5 {Scored.from_dict(final).map50})")
        from ..commands.train import final_class_rows
        from ._tables import rows_table, wide_console

        rows = final_class_rows(result.summary, result.out)
        if rows:
            wide_console().print(rows_table(rows, title="the final model per class"))
    return 0
