"""The parameter groups a phase trains or freezes, and freezing itself.

Every parameter of a detector belongs to one group (:data:`GROUPS`): ``backbone``, ``encoder``,
``decoder``, ``class_head`` or ``fusion``, decided by its name. A phase names the groups that train;
:func:`set_trainable` freezes the rest (no gradient, batch norms in eval mode through the detector's
``frozen_groups``).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..config import ALL_GROUPS
from ..errors import ConfigError

GROUPS: tuple[str, ...] = ALL_GROUPS  # the parameter groups phases train or freeze


def parameter_group(name: str) -> str:
    """The group (one of :data:`GROUPS`) that owns a parameter or buffer name."""
    if ".fusion." in name or name.startswith("fusion."):
        return "fusion"
    if name.startswith(("model.conv_encoder.backbone.", "model.conv_encoder.model.")):
        return "backbone"
    if name.startswith(("model.conv_encoder.", "model.encoder.")):
        return "encoder"
    if name.startswith(("model.decoder.class_embed.", "class_embed.", "model.decoder.lqe_layers.")):
        return "class_head"
    return "decoder"


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Distinct parameters by group, in model order."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUPS}
    for name, param in model.named_parameters():
        groups[parameter_group(name)].append((name, param))
    return groups


def set_trainable(model: nn.Module, groups: Iterable[str]) -> dict[str, int]:
    """Train only ``groups``: every other parameter gets ``requires_grad=False`` and BN in eval.

    Parameters the model created frozen (a detector's ``constant_parameters``) stay frozen
    whatever group they belong to. Returns the number of trainable parameters per group.
    """
    wanted = set(groups)
    unknown = wanted - set(GROUPS)
    if unknown:
        raise ConfigError(f"unknown parameter group(s) {sorted(unknown)}; groups are {', '.join(GROUPS)}")
    counts = dict.fromkeys(GROUPS, 0)
    constants = getattr(model, "constant_parameters", frozenset())
    for name, param in model.named_parameters():
        group = parameter_group(name)
        trains = group in wanted and name not in constants
        param.requires_grad_(trains)
        if trains:
            counts[group] += param.numel()
    model.frozen_groups = frozenset(set(GROUPS) - wanted)
    model.train(model.training)
    return counts
