"""The summary page of ``explain --annotations``: each map kind against the boxes and its controls.

Written to ``out/report.md`` + ``out/report.html`` (+ ``out/map_quality.json``): the quality table
(pointing game and AUROC beside chance, per kind and per class), each kind against the
detections-only control, right class against wrong class, the pointing game where the detector
got it wrong, faithfulness when measured, figures of these, and a grid of the best and worst
(image, class) pairs of the default kind, each with its map, its boxes and the map's maximum marked.

Every sentence comes from those comparisons: a kind "points at the objects" only when it beats the
detections-only control, and no kind is said to show where the class decision came from unless its
faithfulness beats that control (:func:`choose_default_kind`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_json
from .map_readings import (
    DEFAULT_RULE,
    NOT_MEASURED,
    as_dict,
    choose_default_kind,
    difference_text,
    faithfulness_vs_control,
    interval_text,
    kind_sentence,
    reading,
)
from .markdown import Section, write_report
from .plots.explain_quality import plot_controls, plot_examples, plot_quality


@dataclass
class Example:
    """One (image, class) pair kept for the grid: its quality, a thumbnail and that class's map on it."""

    quality: Any  # engine.explain.map_quality.PairQuality
    image: np.ndarray  # uint8 [h, w, 3]
    class_map: np.ndarray  # float [h, w]
    boxes: np.ndarray  # [n, 4] xyxy in thumbnail pixels
    folder: Path  # the image's explanation files


@dataclass
class SummaryFiles:
    md: Path
    html: Path
    json: Path
    pngs: list[Path]

    def all(self) -> list[Path]:
        return [self.md, self.html, self.json, *self.pngs]


def _wrong_detections(w: Mapping[str, Any]) -> str:
    if w.get("pairs") is None:
        return "not told"
    if not w["pairs"]:
        return "none wrong"
    pg = "–" if w.get("pointing_game") is None else f"{w['pointing_game']:.2f}"
    control = "" if w.get("control_pointing_game") is None else f"; control {w['control_pointing_game']:.2f}"
    return f"{pg} (n={w['pairs']}{control})"


def quality_rows(
    quality: Mapping[str, Any],
    default_kind: str | None,
    kinds: Mapping[str, str],
    comparisons: Mapping[str, Any] | None = None,
    faithfulness: Mapping[str, Any] | None = None,
) -> list[dict[str, str]]:
    """The compact table: per kind where it peaks, its faithfulness reading and what it reads as
    (:func:`control_rows` and :func:`faithfulness_rows` hold the differences behind the readings)."""
    rows = []
    for kind, summary in quality.items():
        o = summary.overall
        pg, auc = o.get("pointing_game"), o.get("auroc")
        comparison = as_dict(comparisons.get(kind)) if comparisons is not None else None
        row = {
            "map kind": f"**{kind}** (default)" if kind == default_kind else kind,
            "pointing game": "–" if pg is None else f"{pg:.2f}{interval_text(o.get('pointing_game_interval'))}",
            "chance": "–" if o.get("chance") is None else f"{o['chance']:.2f}",
            "AUROC (0.5: none)": "–" if auc is None else f"{auc:.2f}{interval_text(o.get('auroc_interval'))}",
            "pairs": str(o.get("pairs", 0)),
        }
        if faithfulness is not None:
            f = faithfulness.get(kind) or {}
            row["faithfulness"] = f.get("meaning") or f.get("reading") or "not measured"
        row["reads as"] = reading(o, comparison)
        rows.append(row)
    return rows


def control_rows(comparisons: Mapping[str, Any]) -> list[dict[str, str]]:
    """Per kind, its differences from the detections-only control and from the wrong class (paired, 95%)."""
    rows = []
    for kind, comparison in comparisons.items():
        c = as_dict(comparison)
        vs, spec = c.get("vs_control") or {}, c.get("class_specificity") or {}
        rows.append(
            {
                "map kind": kind,
                "PG − control": difference_text(vs.get("pointing_game")),
                "AUROC − control": difference_text(vs.get("auroc")),
                "PG right − wrong class": difference_text(spec.get("pointing_game")),
                "AUROC right − wrong class": difference_text(spec.get("auroc")),
                "PG where the detection is wrong": _wrong_detections(c.get("wrong_detections") or {}),
            }
        )
    return rows


def faithfulness_rows(faithfulness: Mapping[str, Any]) -> list[dict[str, str]]:
    """Per kind, its deletion and insertion AUCs and their differences from the control (paired, 95%)."""
    rows = []
    for kind, f in faithfulness.items():
        deletion, insertion = faithfulness_vs_control(f)
        rows.append(
            {
                "map kind": kind,
                "deletion AUC (lower: more faithful)": "–"
                if f.get("deletion_auc") is None
                else f"{f['deletion_auc']:.3f}",
                "− control": f"[{deletion[0]:+.3f}, {deletion[1]:+.3f}]" if deletion else "–",
                "insertion AUC (higher: more faithful)": "–"
                if f.get("insertion_auc") is None
                else f"{f['insertion_auc']:.3f}",
                "− control ": f"[{insertion[0]:+.3f}, {insertion[1]:+.3f}]" if insertion else "–",
                "reading": f.get("meaning") or f.get("reading") or "–",
            }
        )
    return rows


def per_class_rows(quality: Mapping[str, Any]) -> list[dict[str, str]]:
    classes = list(dict.fromkeys(c for s in quality.values() for c in s.per_class))
    rows = []
    for name in classes:
        row = {"class": name}
        for kind, summary in quality.items():
            c = summary.per_class.get(name, {})
            pg, auc = c.get("pointing_game"), c.get("auroc")
            # one cell a kind (PG / AUROC): a column per number made the table wider than a page
            row[kind] = f"{'–' if pg is None else f'{pg:.2f}'} / {'–' if auc is None else f'{auc:.2f}'}"
        row["pairs"] = str(next(iter(quality.values())).per_class.get(name, {}).get("pairs", 0))
        rows.append(row)
    return rows


def _ranked(gallery: Sequence[Example], count: int, best: bool) -> list[Example]:
    def key(ex: Example) -> tuple[float, float]:
        auc = ex.quality.auroc if ex.quality.auroc is not None else 0.5
        return (float(ex.quality.hit), auc) if best else (-float(ex.quality.hit), -auc)

    chosen, seen = [], set()
    for ex in sorted(gallery, key=key, reverse=True):
        if ex.folder not in seen:
            chosen.append(ex)
            seen.add(ex.folder)
        if len(chosen) == count:
            break
    return chosen


def _control_name(comparisons: Mapping[str, Any] | None) -> str | None:
    names = [as_dict(c).get("control") for c in (comparisons or {}).values()]
    return next((n for n in names if n), None)


def _controls_text(control: str | None, quality: Mapping[str, Any], kinds: Mapping[str, str]) -> str:
    if control is None:
        return (
            "No detections-only control was compared: the numbers say where the maps peak, not whether they show "
            "more than where the detections are, so no kind is said to point at the objects."
        )
    made = f" ({kinds[control]})" if control in kinds else ""
    missing = "" if control in quality else f" The control `{control}` was not scored, so no kind is compared."
    return (
        f"Each kind is read against controls, every difference paired over the same (image, class) pairs with a 95% "
        f"interval from resampling images. **The detections-only control** is `{control}`{made}: a map made of "
        "nothing but the detections peaks in the predicted boxes, so its pointing game restates detection accuracy. "
        "A kind whose difference from it has an interval containing 0 restates the detections; above 0 on a metric "
        "(and below on none) it adds to the detections, and only then is it said to point at the objects. "
        "**The wrong class**: each class's map is also scored against the boxes of the image's other classes; "
        "right class minus wrong class above 0 on both metrics reads class-specific, else the map lights up objects "
        "of any class. **Pairs the detector got wrong** (its best box of the class has IoU below 0.5 with every box "
        "of that class, or it has none): a map that copies the detections misses there." + missing
    )


def write_summary(
    out: str | os.PathLike,
    quality: Mapping[str, Any],
    default_kind: str,
    kinds: Mapping[str, str],
    gallery: Sequence[Example],
    class_names: Sequence[str],
    *,
    examples: int = 4,
    source: str = "",
    tolerance: float = 15.0,
    comparisons: Mapping[str, Any] | None = None,
    faithfulness: Mapping[str, Mapping[str, Any]] | None = None,
    pair_gallery: Sequence[Example] = (),
    pair: Sequence[str] | None = None,
) -> SummaryFiles:
    """The summary page, its figures and ``map_quality.json``.

    Args:
        quality: per kind, a ``QualitySummary`` (``overall``, ``per_class``, ``to_dict()``).
        default_kind: the kind the gallery shows (its maps are the examples').
        comparisons: per kind, a ``MapComparison`` or its dict (``engine.explain.map_comparison.compare_kinds``).
        faithfulness: per kind ``{"deletion_auc", "deletion_vs_boxes": [low, high], "reading"}``; None:
            not measured, and the page says so.
        pair_gallery, pair: the ``contrast`` maps of the confusable ``pair``'s classes (what raised a class's
            logit over its look-alike's), shown as examples of their own.
    """
    out = Path(out)
    plots = out / "plots"
    comparisons = {k: as_dict(c) for k, c in (comparisons or {}).items()} or None
    control = _control_name(comparisons)
    chosen, why = choose_default_kind(quality, comparisons, faithfulness)
    pngs = [plot_quality(quality, plots / "map_quality.png", control)] if quality else []
    if comparisons:
        pngs.append(plot_controls(comparisons, plots / "map_controls.png"))
    best = _ranked(gallery, examples, best=True)
    worst = _ranked(gallery, examples, best=False)
    if best:
        pngs.append(plot_examples(best, class_names, plots / "best_examples.png", f"best pairs ({default_kind})"))
        pngs.append(plot_examples(worst, class_names, plots / "worst_examples.png", f"worst pairs ({default_kind})"))
    method = (
        f"Scored on `{source}`: for every image and every class in its boxes, the pointing game (a hit when the "
        f"class map's maximum falls inside one of that class's boxes grown by {tolerance:g} px; chance is the share "
        "of the image those boxes cover) and the AUROC of map values inside that class's boxes against pixels "
        "outside every box (0.5: no information). A border of 2% of the shorter side and any padding are left "
        "out. Intervals: 95%, resampling images."
    )
    sections = [
        Section(
            "Where the maps peak, beside the detections-only control",
            method + "\n\n" + _controls_text(control, quality, kinds),
            table=quality_rows(quality, chosen, kinds, comparisons, faithfulness),
            images=[(pngs[0], "the control's value and interval drawn across each panel")] if pngs else [],
        )
    ]
    if comparisons:
        sentences = "\n".join(f"- {kind_sentence(k, quality[k].overall, comparisons.get(k))}" for k in quality)
        sections.append(
            Section("What the numbers say", sentences, table=control_rows(comparisons), images=[(pngs[1], "")], level=3)
        )
    if faithfulness:
        sections.append(
            Section(
                "The deletion test",
                "Per explained detection, the pixels a map ranks first are replaced by the image's median colour in "
                "steps, and the detection's score is followed (deletion); or put back into a blank image (insertion). "
                "Paired differences from the control (the detection's own box as a blob) over images, 95%.",
                table=faithfulness_rows(faithfulness),
                level=3,
            )
        )
    sections.append(
        Section(
            "What each map kind computes", "\n".join(f"- `{k}`: {kinds[k]}" for k in quality if k in kinds), level=3
        )
    )
    if chosen == default_kind:
        shown = f"The examples show `{default_kind}`, the chosen kind."
    elif chosen is None:
        shown = f"The examples show `{default_kind}`: where it peaks, not where the class decision came from."
    else:
        shown = f"The examples show `{default_kind}`, not the kind the rule chose (`{chosen}`)."
    if faithfulness:
        faithful = (
            "Faithfulness per kind is in the table (deletion AUC and its difference from the control). "
            f"Rule: {DEFAULT_RULE}. Chosen: {why}."
        )
    else:
        faithful = f"{NOT_MEASURED[0].upper()}{NOT_MEASURED[1:]}. The rule, once it is measured: {DEFAULT_RULE}."
    sections.append(Section("Faithfulness and the default kind", f"{faithful} {shown}", level=3))
    sections.append(Section("Per class", "Each cell: pointing game / AUROC.", table=per_class_rows(quality), level=3))
    if best:
        sections.append(
            Section(
                f"Best and worst examples ({default_kind})",
                "Cyan: the class's boxes; the cross marks the map's maximum (green: a hit, red: a miss). Each "
                "image's own figures are in its folder.",
                images=[(pngs[-2], "best"), (pngs[-1], "worst")],
            )
        )
    if pair_gallery and pair:
        title = f"contrast maps, {pair[0]} vs {pair[1]}"
        pair_pngs = [
            plot_examples(_ranked(pair_gallery, examples, best=b), class_names, plots / name, f"{word} {title}")
            for b, name, word in ((True, "contrast_best.png", "best"), (False, "contrast_worst.png", "worst"))
        ]
        pngs.extend(pair_pngs)
        sections.append(
            Section(
                f"The confusable pair: {pair[0]} vs {pair[1]}",
                f"The `contrast` map of a {pair[0]} box is what raised its {pair[0]} logit over its {pair[1]} logit "
                "(and the other way round): the best and worst of these pairs. Its numbers are in the tables above "
                "(row `contrast`).",
                images=[(pair_pngs[0], "best"), (pair_pngs[1], "worst")],
                level=3,
            )
        )
    md, html = write_report(out, "Explanation maps against the boxes and a detections-only control", sections)
    json_path = out / "map_quality.json"
    per_kind = {}
    for k, s in quality.items():
        c = (comparisons or {}).get(k, {})
        entry = {**s.to_dict(), "reads_as": reading(s.overall, c or None)}
        entry.update({part: c[part] for part in ("vs_control", "class_specificity", "wrong_detections") if part in c})
        if faithfulness is not None:
            entry["faithfulness"] = faithfulness.get(k)
        per_kind[k] = entry
    atomic_write_json(
        json_path,
        {
            "source": source,
            "tolerance_px": tolerance,
            "default_kind": default_kind,
            "default_choice": {"kind": chosen, "why": why, "rule": DEFAULT_RULE},
            "control": control,
            "faithfulness_measured": bool(faithfulness),
            "kinds": dict(kinds),
            "quality": per_kind,
        },
    )
    return SummaryFiles(md, html, json_path, pngs)
