"""Pack a trained demo baseline into the package: float16 weights, measured, with its model card.

    python tools/pack_demo_baseline.py RUN/baseline/best DATA [--processes 2]

RUN and DATA come from the commands the card lists (``defectfusion synth`` and ``train scratch_cpu``);
the result replaces ``src/defectfusion/demo_baseline/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from defectfusion.commands.demo_baseline import RESOURCE, pack_baseline, training_commands

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("best", type=Path, help="the trained baseline's best folder")
    parser.add_argument("data", type=Path, help="the synthetic data it was trained on (val and test are measured)")
    parser.add_argument("--processes", type=int, default=2, help="processes it was trained with (default: 2)")
    args = parser.parse_args()
    dest = Path(__file__).resolve().parent.parent / "src" / "defectfusion" / RESOURCE
    card = pack_baseline(args.best, args.data, dest, training_commands(processes=args.processes))
    size = (dest / "model.safetensors").stat().st_size / 2**20
    print(f"{dest}: {size:.2f} MiB; val mAP@0.5 {card['val']['map50']:.4f}, test {card['test']['map50']:.4f}")
