"""Which settings of a resolved config a resumed run may change: speed, not results.

A run (and a study's plan) is resumed only with the config it started with, except for the keys
in :data:`SPEED_KEYS`: they change how fast a run goes or how it checks its inputs, never what it
trains (up to floating-point summation order, as any thread count does). A resumed run uses the
new values. Chosen conservatively; not in the list, on purpose:

- ``train.device``: ``amp: auto`` resolves to bf16 on a GPU and off on a CPU (other numbers);
- ``data.batch_size``: another batch is another optimisation;
- logging and tracking keys (``train.tensorboard``, ``train.mlflow*``): a log split in two.

``data.num_workers`` is safe because every training sample's randomness is seeded from
``(seed, epoch, index)`` (:mod:`..data.transforms`), whichever worker draws it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

#: Keys a resumed run or study may change (``--threads``, ``--workers``, ...).
SPEED_KEYS: tuple[str, ...] = (
    "train.threads",
    "data.num_workers",
    "data.eval_batch_size",
    "data.verify_images",
)


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def config_differences(
    saved: BaseModel, given: BaseModel, ignore: Iterable[str] = SPEED_KEYS
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, given value)`` for every leaf that differs, keys in ``ignore`` left out.

    A key one side lacks (a phase only one config defines) shows as ``None`` on that side.
    """
    a, b = _flat(saved.model_dump(mode="json")), _flat(given.model_dump(mode="json"))
    skip = set(ignore)
    keys = list(dict.fromkeys([*a, *b]))
    return [(k, a.get(k), b.get(k)) for k in keys if k not in skip and a.get(k) != b.get(k)]


def describe_differences(differences: Iterable[tuple[str, Any, Any]], limit: int = 6) -> str:
    """``key (saved X, given Y)``, comma-separated, the first ``limit`` of them."""
    items = list(differences)
    text = ", ".join(f"{key} (saved {old!r}, given {new!r})" for key, old, new in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")
