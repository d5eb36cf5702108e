"""The shorthand flags of ``train`` and ``study`` (``--epochs``, ``--image-size``, ...) as config overrides.

Each flag becomes the ``-o KEY=VALUE`` override it stands for, so it is validated like any other
and recorded in the run's resolved ``config.yaml``. ``--epochs`` sets the epochs of every phase
the config's ``order`` trains (one number for a one-phase recipe such as ``scratch_cpu``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import load_config
from ..errors import ConfigError


@dataclass(frozen=True)
class Shorthand:
    epochs: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    device: str | None = None
    threads: int | None = None
    workers: int | None = None

    def overrides(self, config: str | os.PathLike | None, given: Sequence[str] = ()) -> list[str]:
        """The overrides these flags stand for, for ``config`` (its phases decide where epochs go)."""
        for name in ("epochs", "image_size", "batch_size", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        out = []
        if self.epochs is not None:
            order = load_config(config, list(given)).order
            out += [f"phases.{phase}.epochs={self.epochs}" for phase in order]
        if self.image_size is not None:
            out.append(f"model.image_size=[{self.image_size}, {self.image_size}]")
        if self.batch_size is not None:
            out.append(f"data.batch_size={self.batch_size}")
        if self.device is not None:
            out.append(f"train.device={self.device}")
        if self.threads is not None:
            out.append(f"train.threads={self.threads}")
        if self.workers is not None:
            out.append(f"data.num_workers={self.workers}")
        return [*given, *out]


def shorthand_from_args(args) -> Shorthand:
    return Shorthand(args.epochs, args.image_size, args.batch_size, args.device, args.threads, args.workers)


def overrides_from_args(args, resumed_refusal: str) -> list[str]:
    """``args.override`` plus what the shorthand flags stand for; ``resumed_refusal`` is the error
    when flags that change results are given without a config (a resumed run or study keeps its
    own): ``--threads`` and ``--workers`` change speed only and may be given to a resume."""
    shorthand = shorthand_from_args(args)
    if shorthand == Shorthand():
        return list(args.override)
    if args.config is None:
        speed = Shorthand(threads=shorthand.threads, workers=shorthand.workers)
        if shorthand != speed:
            raise ConfigError(f"{resumed_refusal} (--threads and --workers may change: they change speed only)")
        return speed.overrides(None, args.override)
    return shorthand.overrides(args.config, args.override)
