"""What the frozen-trunk cache's digests and flushes cost per file, beside the store without them.

For each setting the script builds the detector's trunk (random weights), computes the maps of one
image and times, per file, medians of ``--reps`` repetitions in alternation:

- write: the store's (SHA-256 of the tensors into the metadata, serialise, write, fsync the file,
  rename, fsync the folder) vs the control, what the store did before (``save_file`` to a temporary
  file and rename, nothing flushed);
- read: the store's (read the bytes, parse, check the SHA-256) vs the control (``load_file`` and
  touching every value, as stacking a batch does);
- check: the header check a phase makes of every file when it prepares its cache;
- digest: the SHA-256 of the tensors alone.

It prints ``<setting> <what> store=<ms> control=<ms> ratio=<x>``. Settings: ``demo@256``
(``dinov3_demo``, the demo's model) and ``M@640`` (``dinov3_m``, the user's architecture).

Usage:  python benchmarks/cache_digest.py [--reps 30] [--threads 1] [--skip-m] [--dir DIR]

Numbers (the 2-vCPU VM of benchmarks/README.md, local virtual disk, torch 2.14.1 CPU, 1 thread,
medians of 30; the files in the page cache, as they are after the first epoch):

| setting | file | write: store / control | read: store / control | header check | SHA-256 alone |
|---|---|---|---|---|---|
| demo@256 | 0.52 MB | 1.70 / 0.41 ms | 0.52 / 0.26 ms | 0.07 ms | 0.33 ms |
| M@640 | 8.60 MB | 22.9 / 12.2 ms | 6.86 / 0.86 ms | 0.15 ms | 4.92 ms |

A read pays the digest (~1.75 GB/s) and two copies that the control's memory map skips: ~6 ms per
M@640 file, ~12 ms for a batch of 2 against a phase-1 step of ~660 ms on this CPU (2%; in the
loader's worker processes, beside the step, when ``data.num_workers`` > 0); ~0.3 ms per demo file.
A write pays the digest and two flushes (~1 ms at demo size), once per image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from defectfusion.config import load_config
from defectfusion.data.feature_store import FeatureStore, tensors_digest
from defectfusion.models.detector import build_detector
from defectfusion.models.trunk import trunk_features

SETTINGS = {"demo@256": ("dinov3_demo", 256), "M@640": ("dinov3_m", 640)}


def _maps(preset: str, size: int) -> list[torch.Tensor]:
    cfg = load_config("demo", [f"model.preset={preset}", f"model.image_size=[{size},{size}]"])
    torch.manual_seed(0)
    model = build_detector(cfg.model, [f"c{i}" for i in range(6)]).eval()
    with torch.no_grad():
        return [t[0].contiguous() for t in trunk_features(model, torch.rand(1, 3, size, size))]


def _control_write(folder: Path, name: str, maps: list[torch.Tensor]) -> None:
    tmp = folder / f".{name}.tmp"
    save_file({f"level{i}": t for i, t in enumerate(maps)}, str(tmp))
    os.replace(tmp, folder / f"{name}.safetensors")


def _control_read(folder: Path, name: str) -> float:
    stored = load_file(str(folder / f"{name}.safetensors"))
    return sum(float(t.sum()) for t in stored.values())


def _ms(work) -> float:
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) * 1e3


def _measure(maps: list[torch.Tensor], reps: int, where: str | None) -> dict[str, float]:
    """Median milliseconds per file of each operation (the store's and the control's, alternating)."""
    times: dict[str, list[float]] = {k: [] for k in ("write", "write0", "read", "read0", "check", "digest")}
    with tempfile.TemporaryDirectory(dir=where) as root:
        store = FeatureStore(root, "store")
        control = Path(root) / "control"
        control.mkdir()
        for rep in range(reps + 1):  # the first round warms up and is dropped
            name = f"f{rep}"
            pairs = [
                ("write", partial(store.write, name, maps)),
                ("write0", partial(_control_write, control, name, maps)),
                ("read", partial(store.read, name)),
                ("read0", partial(_control_read, control, name)),
            ]
            if rep % 2:  # alternate which of a pair goes first
                pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
            pairs += [("check", partial(store.check, name)), ("digest", partial(tensors_digest, maps))]
            for key, work in pairs:
                elapsed = _ms(work)
                if rep:
                    times[key].append(elapsed)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-m", action="store_true")
    parser.add_argument("--dir", default=None, help="where the files go (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for setting, (preset, size) in SETTINGS.items():
        if setting == "M@640" and args.skip_m:
            continue
        maps = _maps(preset, size)
        megabytes = sum(t.numel() * t.element_size() for t in maps) / 1e6
        med = _measure(maps, args.reps, args.dir)
        print(f"{setting} file {megabytes:.2f} MB ({len(maps)} maps, {maps[0].dtype})")
        for what in ("write", "read"):
            store, control = med[what], med[f"{what}0"]
            print(f"{setting} {what} store={store:.2f}ms control={control:.2f}ms ratio={store / control:.2f}")
        print(f"{setting} check store={med['check']:.3f}ms digest={med['digest']:.2f}ms")


if __name__ == "__main__":
    main()
