"""`defectfusion study`: text vs random vs continued (x seeds x training fractions), scored on test, with a verdict."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shorthand import add_shorthand_flags


def _fractions(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fractions like 0.1,0.25,1.0, got {text!r}"
        ) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="did the descriptions help? arms x seeds from one baseline, scored on test, with intervals and a verdict",
        description="Train every arm (text: the config; shuffled: the descriptions on the wrong classes; random: "
        "random vectors as text; continued: the same phases without a fusion head; one arm per --descriptions file) "
        "with every seed (and training fraction) from the config's model.checkpoint, each an ordinary resumable run, "
        "after checking every run's inputs; score each final model on data.test (which selected nothing); report "
        "intervals over seeds and test images, how much the text was used, power, and a verdict by a rule stated "
        "before the numbers (docs/method.md). --resume may change --parallel, --threads and --workers.",
    )
    p.add_argument(
        "config", nargs="?", help="training config (its model.checkpoint is the baseline); optional with --resume"
    )
    p.add_argument("--out", type=Path, required=True, help="study folder")
    p.add_argument(
        "--arms",
        default="text,shuffled,random,continued",
        help="comma-separated (default: text,shuffled,random,continued; the rule compares text with each control run)",
    )
    p.add_argument(
        "--seeds", type=int, default=3, help="training seeds per arm (default: 3; fewer: the report says what it costs)"
    )
    p.add_argument(
        "--train-fractions",
        type=_fractions,
        default=[1.0],
        metavar="F,F,...",
        help="train every arm on these nested, class-stratified fractions of the training images",
    )
    p.add_argument(
        "--fraction-baselines",
        action="store_true",
        help="train a baseline on each training fraction below 1 too (the config's `baseline` phase, from "
        "model.backbone_weights or scratch) and start that fraction's arms from it; without it every arm starts "
        "from model.checkpoint, trained on all the images, so the curve measures fine-tuning data",
    )
    p.add_argument(
        "--descriptions", nargs="+", default=[], metavar="YAML", help="extra description files: one arm each"
    )
    p.add_argument("--parallel", type=int, default=1, help="runs at a time with the local launcher (default: 1)")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local", help="local processes or Slurm jobs")
    p.add_argument("--slurm-partition", default=None, help="Slurm partition (launcher slurm)")
    p.add_argument("--slurm-time", type=int, default=24 * 60, metavar="MIN", help="Slurm time limit per run, minutes")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap draws of the test images (default: 2000)")
    p.add_argument(
        "--explain",
        type=int,
        default=0,
        metavar="N",
        help="explain N scoring images per fused arm and report how "
        "well the maps point at the boxes (default: 0, not done)",
    )
    p.add_argument("--resume", action="store_true", help="continue the study in --out: only what is missing runs")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--quiet", action="store_true", help="less output")
    add_shorthand_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..commands.study import run_study
    from ..commands.study_launch import SlurmOptions
    from ..errors import ConfigError

    if args.config is None and not args.resume:
        raise ConfigError("give a training config, or --resume --out STUDY_DIR")
    if args.seeds < 1 or args.parallel < 1 or args.draws < 10:
        raise ConfigError("--seeds and --parallel must be >= 1 and --draws >= 10")
    if args.explain < 0:
        raise ConfigError(f"--explain must be >= 0 images, got {args.explain}")
    if any(not 0 < f <= 1 for f in args.train_fractions):
        raise ConfigError(f"--train-fractions must be in (0, 1], got {args.train_fractions}")
    if (args.out / "study.json").is_file() and not args.resume:
        raise ConfigError(f"{args.out} already holds a study: pass --resume to continue it, or another --out")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    from ..commands.shorthand import overrides_from_args

    overrides = overrides_from_args(args, "shorthand flags change the config: a resumed study keeps its own")
    result = run_study(
        args.config,
        args.out,
        overrides=overrides,
        arms=arms,
        seeds=args.seeds,
        fractions=args.train_fractions,
        fraction_baselines=args.fraction_baselines,
        descriptions=args.descriptions,
        parallel=args.parallel,
        launcher=args.launcher,
        resume=args.resume,
        draws=args.draws,
        explain_images=args.explain,
        slurm=SlurmOptions(partition=args.slurm_partition, timeout_min=args.slurm_time),
        progress=not args.quiet,
    )
    print(f"study folder: {result.out}")
    return 0
