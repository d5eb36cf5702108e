"""Which learning rate the fusion heads' scalars need: phases 1-2 of the demo at several multipliers.

Adam moves a scalar by about its lr per step whatever its gradient, so a gate that starts at 0
and trains at the fusion lr stays near 0 for a short phase, and the text path never opens. The
gate, logit scale and logit bias therefore train at the fusion lr times
``fusion.scalar_lr_multiplier`` (param group ``fusion/scalars``). This script measures what a
multiplier does, from a baseline trained once, beside its control (multiplier 1, the scalars at
the fusion lr: what training did before the group existed):

1. the dataset: a synthetic style (``demo``: the demo's data, seed 0, 400 / 80 / 160 images at
   256 px; ``small``: seed 7, ``--defect-scale small``, several 12-48 px defects per image), in
   ``OUT/data`` (kept when present);
2. the baseline: the packaged ``demo`` config's baseline phase (``dinov3_demo`` from scratch,
   12 epochs), in ``OUT/baseline`` (resumed or reused when present);
3. per multiplier and seed, phases 1 and 2 of the demo config (one epoch each, the demo's lrs,
   the MiniLM descriptions: the text arm) from the baseline, gates off, in
   ``OUT/runs/m<multiplier>/seed<seed>``; a shared frozen-trunk cache (``OUT/cache``).

Per run and phase it records the gates at the end of the phase (the last model), the text usage
of that model on the validation images (``engine.explain.text_usage``: ``|g * text| / |base|`` of the
predicted class's logit, class-centred, and the share of predictions the text flipped), the
validation mAP@0.5 at the start (epoch 0), at the end and at the best evaluation, and whether the
best is the start. One JSON line per run and phase in ``OUT/results.jsonl``; a table at the end.

Usage:  python benchmarks/fusion_scalar_lr.py OUT [--style demo|small] [--multipliers 1 10 30 100 300]
        [--seeds 0 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from defectfusion.commands.demo import FULL, demo_overrides
from defectfusion.config import load_config
from defectfusion.data.coco import load_coco
from defectfusion.data.synthetic import generate_synthetic_dataset
from defectfusion.engine.explain.text_usage import TextUsageProbe
from defectfusion.engine.prediction.predictor import Predictor
from defectfusion.engine.training.progressive import run_training
from defectfusion.io import read_json
from defectfusion.models.checkpoint import load_detector

STYLES = {"demo": {"seed": 0, "defect_scale": "normal"}, "small": {"seed": 7, "defect_scale": "small"}}
PHASES = ("phase1", "phase2")


def _data(out: Path, style: str) -> Path:
    data = out / "data"
    if not (data / "test" / "annotations.json").is_file():
        generate_synthetic_dataset(
            data, train=FULL.train_images, val=FULL.val_images, test=FULL.test_images, size=FULL.image_size,
            progress=False, **STYLES[style],
        )  # fmt: skip
    return data


def _baseline(out: Path, data: Path, threads: int) -> Path:
    """The baseline's best checkpoint (trained here, or found from an earlier call)."""
    folder = out / "baseline"
    if not (folder / "baseline" / "result.json").is_file():
        overrides = [*demo_overrides(data, FULL)["baseline"], f"train.threads={threads}", "train.tensorboard=false"]
        run_training(load_config("demo", overrides), folder, resume=(folder / "config.yaml").is_file())
    summary = read_json(folder / "summary.json", "the baseline run's summary")
    return Path(summary["phases"]["baseline"]["best_dir"]).resolve()


def _text_usage(checkpoint: Path, data: Path) -> dict[str, Any]:
    """Gates and text usage of a model on the validation images."""
    model = load_detector(checkpoint)
    val = load_coco(data / "val" / "annotations.json")
    predictor = Predictor.from_model(model, batch_size=8)
    with TextUsageProbe(predictor.model) as probe:
        for _ in predictor.predict_files([r.path for r in val.images], progress=False):
            pass
    head = model.model.decoder.class_embed[probe.layer].fusion
    return {
        **probe.result().to_dict(),
        "logit_scale": float(head.logit_scale.detach()),
        "logit_bias": float(head.logit_bias.detach()),
    }


def _run(out: Path, data: Path, baseline: Path, multiplier: float, seed: int, threads: int) -> list[dict[str, Any]]:
    folder = out / "runs" / f"m{multiplier:g}" / f"seed{seed}"
    common = [o for o in demo_overrides(data, FULL)["study"] if not o.startswith(("data.test.", "order="))]
    cfg = load_config(
        "demo",
        [
            *common,
            f"model.checkpoint={baseline}",
            f"seed={seed}",
            f"fusion.scalar_lr_multiplier={multiplier}",
            f"train.threads={threads}",
            f"train.cache_dir={out / 'cache'}",
            f"order=[{', '.join(PHASES)}]",
        ],
    )
    cfg = cfg.model_copy(update={"gates": {}})  # both phases run, whatever the first one scored
    started = time.perf_counter()
    if not (folder / "summary.json").is_file() or read_json(folder / "summary.json", "run").get("final") is None:
        run_training(cfg, folder, resume=(folder / "config.yaml").is_file(), progress=False)
    seconds = time.perf_counter() - started
    rows = []
    for phase in PHASES:
        result = read_json(folder / phase / "result.json", "phase result")
        usage = _text_usage(folder / phase / "last", data)
        rows.append(
            {
                "multiplier": multiplier,
                "seed": seed,
                "phase": phase,
                "gate": usage["layer_gate"],
                "gates": usage["gates"],
                "text_share": usage["text_share"],
                "text_share_centered": usage["text_share_centered"],
                "flip_share": usage["flip_share"],
                "mean_abs_text": usage["mean_abs_text"],
                "mean_abs_base": usage["mean_abs_base"],
                "num_selected": usage["num_selected"],
                "logit_scale": usage["logit_scale"],
                "logit_bias": usage["logit_bias"],
                "map50_start": result["initial_map50"],
                "map50_last": result["last_map50"],
                "map50_best": result["best_map50"],
                "best_is_start": result["best_epoch"] == 0,
                "seconds": round(seconds, 1),
            }
        )
    return rows


def _table(rows: list[dict[str, Any]], style: str) -> str:
    lines = [
        "| data | multiplier | seed | phase | gate (eval layer; all layers) | text share (centred) | flip share "
        "| val mAP@0.5 start / last / best | best = start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gates = f"{r['gate']:.3f} ({min(r['gates']):.3f}-{max(r['gates']):.3f})"
        lines.append(
            f"| {style} | {r['multiplier']:g} | {r['seed']} | {r['phase']} | {gates} | {r['text_share']:.3f} "
            f"({r['text_share_centered']:.3f}) | {r['flip_share']:.3f} | {r['map50_start']:.3f} / "
            f"{r['map50_last']:.3f} / {r['map50_best']:.3f} | {'yes' if r['best_is_start'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for the data, the baseline, the runs and results.jsonl")
    parser.add_argument("--style", choices=sorted(STYLES), default="demo", help="the synthetic data's look")
    parser.add_argument("--multipliers", type=float, nargs="+", default=[1, 10, 30, 100, 300])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="run seeds (the baseline is one)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    data = _data(out, args.style)
    baseline = _baseline(out, data, args.threads)
    rows = []
    for multiplier in args.multipliers:
        for seed in args.seeds:
            for row in _run(out, data, baseline, multiplier, seed, args.threads):
                rows.append(row)
                with open(out / "results.jsonl", "a", encoding="utf-8") as sink:
                    sink.write(json.dumps({"style": args.style, **row}) + "\n")
            print("\n".join(_table(rows[-len(PHASES) :], args.style).splitlines()[2:]), flush=True)
    print(_table(rows, args.style))


if __name__ == "__main__":
    main()
