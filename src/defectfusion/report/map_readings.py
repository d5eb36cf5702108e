"""Words from numbers: what a map kind's comparisons with its controls allow one to say.

Comparisons are the dicts of ``engine.explain.map_comparison.MapComparison`` (or the objects, which have
``to_dict()``): ``vs_control`` and ``class_specificity`` hold per metric ``{"mean", "interval",
"pairs"}`` and a ``reading``; ``wrong_detections`` holds ``{"pairs", "pointing_game",
"control_pointing_game"}``. A kind "points at the objects" only when it beats the detections-only
control; no kind is said to show where the class decision came from unless its faithfulness beats
that control (:func:`choose_default_kind`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_RULE = (
    "the default kind is one whose faithfulness beats the detections-only control: against it, its deletion AUC "
    "is lower or its insertion AUC higher (the 95% interval of the paired difference excludes 0), it is worse on "
    "neither curve, and it is better than a random pixel order; of several, the one with the lowest deletion AUC"
)
NOT_MEASURED = (
    "faithfulness was not measured: no kind is chosen, and no map here is shown to be where the class decision "
    "came from"
)
NONE_BEATS = "no kind beats the detections-only control on faithfulness"


METRICS = ("pointing_game", "auroc")
EPS = 1e-9  # an interval bound within this of 0 counts as 0


def as_dict(item: Any) -> dict[str, Any]:
    """A comparison as its dict (an engine ``MapComparison`` or the dict it writes)."""
    return dict(item.to_dict()) if hasattr(item, "to_dict") else dict(item or {})


def _direction(difference: Mapping[str, Any] | None) -> str | None:
    if not difference or difference.get("mean") is None or not difference.get("interval"):
        return None
    low, high = difference["interval"]
    return "above" if low > EPS else "below" if high < -EPS else "within"


def beats_control(vs_control: Mapping[str, Any]) -> bool:
    """True when a metric's difference from the control has its interval above 0 and none below."""
    directions = [_direction(vs_control.get(m)) for m in METRICS]
    return "above" in directions and "below" not in directions


def reading(overall: Mapping[str, Any], comparison: Any = None) -> str:
    """One phrase for what a kind's numbers allow one to say, from its comparisons (when given).

    "points at the objects" only when the kind beats the detections-only control.
    """
    pg, chance, auc = overall.get("pointing_game"), overall.get("chance"), overall.get("auroc")
    if pg is None:
        return "no annotated pairs"
    if auc is not None and auc < 0.5:
        return "misleading: lower on the objects than on the background"
    low = (overall.get("pointing_game_interval") or [pg, pg])[0]
    above_chance = chance is not None and low > chance
    c = as_dict(comparison) if comparison is not None else {}
    vs = c.get("vs_control") or {}
    if not any(vs.get(m) for m in METRICS):
        words = ["above chance" if above_chance else "no better than chance"]
        words.append(vs.get("reading") or "not compared with a detections-only control")
    else:
        words = [] if above_chance else ["no better than chance"]
        if beats_control(vs):
            words.append("points at the objects beyond the detections (adds to the detections)")
        else:
            words.append(vs.get("reading", ""))
    specificity = (c.get("class_specificity") or {}).get("reading")
    return "; ".join(w for w in [*words, specificity] if w)


def faithfulness_vs_control(entry: Mapping[str, Any]) -> tuple[list[float] | None, list[float] | None]:
    """The 95% intervals of deletion and insertion AUC minus the control's: ``deletion_vs_boxes`` and
    ``insertion_vs_boxes``, else ``versus["boxes"]``'s ``deletion_interval`` and ``insertion_interval``
    (``engine.explain.faithfulness.summarize_faithfulness``'s entries)."""
    boxes = (entry.get("versus") or {}).get("boxes") or {}
    deletion = entry.get("deletion_vs_boxes") or boxes.get("deletion_interval")
    insertion = entry.get("insertion_vs_boxes") or boxes.get("insertion_interval")
    return deletion, insertion


def faithfulness_beats_control(entry: Mapping[str, Any]) -> bool:
    """Better than the control on a curve (deletion interval below 0, or insertion interval above 0),
    worse on neither, and not read "random-like" (no better than a random pixel order)."""
    deletion, insertion = faithfulness_vs_control(entry)
    better = bool(deletion and deletion[1] < -EPS) or bool(insertion and insertion[0] > EPS)
    worse = bool(deletion and deletion[0] > EPS) or bool(insertion and insertion[1] < -EPS)
    return better and not worse and entry.get("reading") != "random-like"


def choose_default_kind(
    quality: Mapping[str, Any], comparisons: Mapping[str, Any] | None, faithfulness: Mapping[str, Any] | None
) -> tuple[str | None, str]:
    """The kind the page calls its default and the sentence saying why (rule: :data:`DEFAULT_RULE`).

    ``faithfulness``: per kind ``{"deletion_auc", "deletion_vs_boxes": [low, high], "reading"}``
    (optionally ``insertion_auc``, ``insertion_vs_boxes``; or ``summarize_faithfulness``'s ``versus``),
    the differences being kind minus control. (None, why) when faithfulness was not measured or no
    kind beats the control on it.
    """
    if not faithfulness:
        return None, NOT_MEASURED
    controls = {as_dict(c).get("control") for c in (comparisons or {}).values()} | {"boxes", "random"}
    candidates = [
        k for k, f in faithfulness.items() if k not in controls and k in quality and faithfulness_beats_control(f)
    ]
    if not candidates:
        return None, NONE_BEATS

    def key(kind: str) -> tuple[float, str]:
        auc = faithfulness[kind].get("deletion_auc")
        return (math.inf if auc is None else float(auc)), kind

    best = min(candidates, key=key)
    deletion, insertion = faithfulness_vs_control(faithfulness[best])
    parts = []
    if deletion:
        parts.append(f"deletion AUC minus the control's [{deletion[0]:+.3f}, {deletion[1]:+.3f}]")
    if insertion:
        parts.append(f"insertion AUC minus the control's [{insertion[0]:+.3f}, {insertion[1]:+.3f}]")
    why = f"`{best}` beats the detections-only control on faithfulness ({'; '.join(parts)})"
    if len(candidates) > 1:
        why += f", the lowest deletion AUC of the {len(candidates)} kinds that do"
    comparison = (comparisons or {}).get(best)
    if comparison is not None:
        why += f"; against the boxes it reads: {reading(quality[best].overall, comparison)}"
    return best, why


def interval_text(values: Sequence[float] | None) -> str:
    return f" [{values[0]:.2f}, {values[1]:.2f}]" if values else ""


def difference_text(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    iv = d.get("interval")
    return f"{d['mean']:+.2f}" + (f" [{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv else "")


def kind_sentence(kind: str, overall: Mapping[str, Any], comparison: Any) -> str:
    """What a kind's numbers say, in one sentence per control."""
    c = as_dict(comparison)
    pg = overall.get("pointing_game")
    if pg is None:
        return f"**{kind}**: no annotated pairs."
    chance = overall.get("chance")
    text = f"**{kind}**: pointing game {pg:.2f}{interval_text(overall.get('pointing_game_interval'))}"
    text += "" if chance is None else f" (chance {chance:.2f})"
    vs = c.get("vs_control") or {}
    if kind == c.get("control"):
        text += "; this is the detections-only control"
    elif any(vs.get(m) for m in METRICS):
        text += (
            f"; minus the control `{c.get('control')}`: pointing game {difference_text(vs.get('pointing_game'))}, "
            f"AUROC {difference_text(vs.get('auroc'))}, read as: {vs.get('reading')}"
        )
    else:
        text += f"; {vs.get('reading') or 'not compared with a detections-only control'}"
    spec = c.get("class_specificity") or {}
    pairs = (spec.get("pointing_game") or {}).get("pairs", 0)
    text += (
        f". Right class minus wrong class: pointing game {difference_text(spec.get('pointing_game'))}, AUROC "
        f"{difference_text(spec.get('auroc'))} over {pairs} pairs: {spec.get('reading', 'not measured')}"
    )
    w = c.get("wrong_detections") or {}
    if w.get("pairs"):
        pg_wrong = "–" if w.get("pointing_game") is None else f"{w['pointing_game']:.2f}"
        control = w.get("control_pointing_game")
        text += f". On the {w['pairs']} pairs the detector got wrong: pointing game {pg_wrong}"
        text += "" if control is None else f" (the control's {control:.2f})"
    elif w.get("pairs") == 0:
        text += ". The detector got every pair right, so no pair tells a map from the detections"
    return text + "."
