"""Gates between phases: whether the next phase runs, with the reason and what was compared."""

from __future__ import annotations

import getpass
import shlex
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...config import GateConfig
from ...errors import ConfigError
from .phase_records import PhaseOutcome


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@dataclass(frozen=True)
class GateDecision:
    """What a gate decided after phase ``after``: whether the next phase runs (``proceed``), why, and what it
    compared; ``go_on``: the command that goes past a gate that stopped the run; ``overridden``: who went
    past it, when, and what the gate had said. ``summary.json``'s ``gates`` hold :meth:`to_dict`."""

    after: str
    metric: str
    compared_value: str
    epoch: int | None
    value: float | None
    min: float | None
    max: float | None
    baseline: float | None
    compared: str
    proceed: bool
    reason: str
    go_on: str | None = None
    overridden: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None or k not in ("go_on", "overridden")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateDecision:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


def apply_gate(
    gate: GateConfig, after: str, value: float | None, baseline: float | None, epoch: int | None = None
) -> GateDecision:
    """Whether the phase after ``after`` runs, with a plain-language reason and what was compared.

    ``value`` is the phase's best or last validation metric (``gate.value``), ``epoch`` the epoch
    it was measured at, ``baseline`` the baseline's metric (for relative gates).
    """
    low, high = gate.min, gate.max
    if gate.relative_to_baseline:
        if baseline is None:
            raise ConfigError(f"gate after {after!r} is relative to the baseline, but no baseline was evaluated")
        low = None if low is None else baseline + low
        high = None if high is None else baseline + high
    at = f" (epoch {epoch})" if epoch is not None else ""
    measured = f"{after}'s {gate.value} validation {gate.metric}{at} = {_fmt(value)}"
    bounds_text = []
    for bound, word, offset in ((low, "min", gate.min), (high, "max", gate.max)):
        if bound is not None:
            relative = f" (baseline {baseline:.4f} {offset:+.4f})" if gate.relative_to_baseline else ""
            bounds_text.append(f"{word} {bound:.4f}{relative}")
    if value is None:
        proceed, reason = False, f"{gate.metric} is undefined after {after}: stopping"
    elif low is not None and value < low:
        proceed = False
        reason = (
            f"{gate.metric} {value:.4f} < {low:.4f}: below the gate, the next phase "
            f"does not run (review {after} before going on)"
        )
    elif high is not None and value >= high:
        proceed = False
        reason = f"{gate.metric} {value:.4f} >= {high:.4f}: target reached, the next phase is not needed"
    else:
        bounds = f"[{'-inf' if low is None else f'{low:.4f}'}, {'inf' if high is None else f'{high:.4f}'})"
        proceed, reason = True, f"{gate.metric} {value:.4f} in {bounds}: continue"
    return GateDecision(
        after=after,
        metric=gate.metric,
        compared_value=gate.value,
        epoch=epoch,
        value=value,
        min=low,
        max=high,
        baseline=baseline if gate.relative_to_baseline else None,
        compared=f"{measured} against {', '.join(bounds_text) or 'no bound'}",
        proceed=proceed,
        reason=reason,
    )


def override_gate(decision: GateDecision) -> GateDecision:
    """A stopping decision turned into the user's explicit decision to go on: who, when, what the gate said."""
    try:
        who = getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        who = "the user"
    said = {"by": who, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "gate_said": decision.reason}
    reason = f"{decision.reason} -- overridden by {who}: continue"
    return replace(decision, proceed=True, reason=reason, go_on=None, overridden=said)


def phase_gate(
    gate: GateConfig,
    outcome: PhaseOutcome,
    *,
    baseline: dict[str, Any],
    go_past: bool,
    run: Path,
    following: str,
) -> GateDecision:
    """The gate after the finished phase ``outcome``: its decision, ``go_past`` recorded as the user's override.

    ``baseline``: the baseline's metrics (relative gates); ``following``: the phase the gate lets through. A
    stopping decision carries ``go_on``, the command that trains ``following`` in the run folder ``run`` from
    the phase's best.
    """
    if gate.value == "best":
        value = outcome.best_map50 if gate.metric == "map50" else outcome.best_map
        epoch = outcome.best_epoch
    else:
        value = outcome.last_map50 if gate.metric == "map50" else outcome.last_map
        epoch = outcome.last_epoch
    decision = apply_gate(gate, outcome.name, value, baseline.get(gate.metric), epoch)
    if decision.proceed:
        return decision
    if go_past:
        return override_gate(decision)
    return replace(decision, go_on=f"defectfusion train --out {shlex.quote(str(run))} --phase {shlex.quote(following)}")
