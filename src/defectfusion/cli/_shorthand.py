"""The shorthand flags ``train`` and ``study`` share (turned into overrides by :mod:`..commands.shorthand`)."""

from __future__ import annotations


def add_shorthand_flags(parser) -> None:
    """``--epochs``, ``--image-size``, ``--batch-size``, ``--device``, ``--threads``, ``--workers``."""
    group = parser.add_argument_group("shorthand for common config keys (recorded in the resolved config)")
    group.add_argument("--epochs", type=int, default=None, help="epochs of every phase the run trains")
    group.add_argument("--image-size", type=int, default=None, metavar="N", help="model input N x N (model.image_size)")
    group.add_argument("--batch-size", type=int, default=None, help="data.batch_size")
    group.add_argument("--device", default=None, help="train.device: auto, cpu, cuda or cuda:N")
    group.add_argument("--threads", type=int, default=None, help="train.threads: torch CPU threads")
    group.add_argument("--workers", type=int, default=None, help="data.num_workers: image-loading processes")
