"""The summary page of ``explain --annotations``: how well each map kind localises, and examples.

Written to ``out/report.md`` + ``out/report.html`` (+ ``out/map_quality.json``): the quality table
(pointing game and AUROC beside chance, per kind and per class), a figure of it, and a grid of the
best and worst (image, class) pairs of the default kind, each with its map, its boxes and the map's
maximum marked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Rectangle

from ..io import atomic_write_json
from .markdown import Section, write_report
from .plots import style

# What a thesis can say of a map kind, from its numbers.
LOCALISES = {"pointing_game": 0.6, "auroc": 0.75}


@dataclass
class Example:
    """One (image, class) pair kept for the grid: its quality, a thumbnail and that class's map on it."""

    quality: Any  # engine.map_quality.PairQuality
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


def reading(overall: Mapping[str, Any]) -> str:
    """One phrase for what a kind's numbers allow one to say."""
    pg, chance, auc = overall.get("pointing_game"), overall.get("chance"), overall.get("auroc")
    if pg is None:
        return "no annotated pairs"
    low = (overall.get("pointing_game_interval") or [pg, pg])[0]
    if auc is not None and auc < 0.5:
        return "misleading: lower on the objects than on the background"
    if pg >= LOCALISES["pointing_game"] and (auc or 0.0) >= LOCALISES["auroc"]:
        return "points at the objects"
    if chance is not None and low > chance:
        return (
            f"better than chance, below the bar (pointing game ≥ {LOCALISES['pointing_game']:g} "
            f"and AUROC ≥ {LOCALISES['auroc']:g})"
        )
    return "no better than chance"


def _interval(values: Sequence[float] | None) -> str:
    return f" [{values[0]:.2f}, {values[1]:.2f}]" if values else ""


def quality_rows(quality: Mapping[str, Any], default_kind: str, kinds: Mapping[str, str]) -> list[dict[str, str]]:
    rows = []
    for kind, summary in quality.items():
        o = summary.overall
        pg, auc = o.get("pointing_game"), o.get("auroc")
        rows.append(
            {
                "map kind": f"**{kind}** (default)" if kind == default_kind else kind,
                "pointing game": "–" if pg is None else f"{pg:.2f}{_interval(o.get('pointing_game_interval'))}",
                "chance": "–" if o.get("chance") is None else f"{o['chance']:.2f}",
                "AUROC (0.5: none)": "–" if auc is None else f"{auc:.2f}{_interval(o.get('auroc_interval'))}",
                "pairs": str(o.get("pairs", 0)),
                "reads as": reading(o),
                "what it shows": kinds.get(kind, ""),
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
            row[f"{kind} PG"] = "–" if pg is None else f"{pg:.2f}"
            row[f"{kind} AUROC"] = "–" if auc is None else f"{auc:.2f}"
        row["pairs"] = str(next(iter(quality.values())).per_class.get(name, {}).get("pairs", 0))
        rows.append(row)
    return rows


def plot_quality(quality: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Pointing game beside its chance level, and AUROC beside 0.5, per map kind."""
    kinds = list(quality)
    with style.figure(max(6.0, 1.6 * len(kinds) + 2.5), 3.4) as fig:
        axes = fig.subplots(1, 2)
        x = np.arange(len(kinds))
        for ax, key, ref, ref_label, bar in (
            (axes[0], "pointing_game", "chance", "chance", LOCALISES["pointing_game"]),
            (axes[1], "auroc", None, "no information (0.5)", LOCALISES["auroc"]),
        ):
            values = [quality[k].overall.get(key) or 0.0 for k in kinds]
            intervals = [quality[k].overall.get(f"{key}_interval") for k in kinds]
            err = np.array(
                [[v - iv[0], iv[1] - v] if iv else [0.0, 0.0] for v, iv in zip(values, intervals, strict=True)]
            ).T
            ax.bar(x, values, color=[style.class_hex(i) for i in range(len(kinds))], yerr=err, capsize=3)
            refs = [quality[k].overall.get(ref) or 0.0 for k in kinds] if ref else [0.5] * len(kinds)
            ax.scatter(x, refs, marker="_", s=600, color="black", label=ref_label, zorder=3)
            ax.axhline(bar, color="gray", linestyle=":", linewidth=1, label=f"the bar ({bar:g})")
            ax.set_xticks(x, kinds, rotation=15)
            ax.set_ylim(0, 1)
            ax.set_title("pointing game (hit rate)" if key == "pointing_game" else "AUROC: objects vs background")
            ax.legend(fontsize=7, loc="upper right")
        return style.save_figure(fig, path)


def plot_examples(examples: Sequence[Example], class_names: Sequence[str], path: str | os.PathLike, title: str) -> Path:
    """A row of (image, class) pairs: the map over the image, the class's boxes, a cross at the map's maximum."""
    n = max(1, len(examples))
    with style.figure(2.6 * n, 3.0) as fig:
        axes = np.atleast_1d(fig.subplots(1, n))
        for ax, ex in zip(axes[: len(examples)], examples, strict=True):
            gray = ex.image.astype(np.float32).mean(-1) / 255.0
            ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
            m = ex.class_map
            span = float(m.max() - m.min()) or 1.0
            ax.imshow((m - m.min()) / span, cmap="magma", alpha=0.55, vmin=0, vmax=1)
            for x1, y1, x2, y2 in ex.boxes:
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="cyan", linewidth=1.2))
            y, x = np.unravel_index(int(np.argmax(m)), m.shape)
            ax.plot([x], [y], marker="x", color="lime" if ex.quality.hit else "red", markersize=9, mew=2)
            auc = "–" if ex.quality.auroc is None else f"{ex.quality.auroc:.2f}"
            ax.set_title(f"{class_names[ex.quality.label]}\n{ex.folder.name}: AUROC {auc}", fontsize=8)
            ax.set_axis_off()
        for ax in axes[len(examples) :]:
            ax.set_axis_off()
        fig.suptitle(title, fontsize=10)
        return style.save_figure(fig, path)


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
) -> SummaryFiles:
    out = Path(out)
    plots = out / "plots"
    pngs = [plot_quality(quality, plots / "map_quality.png")] if quality else []
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
            "How well the maps point at the defects",
            method,
            table=quality_rows(quality, default_kind, kinds),
            images=[(p, "") for p in pngs[:1]],
        ),
        Section("Per class", "PG: pointing game.", table=per_class_rows(quality), level=3),
    ]
    if best:
        sections.append(
            Section(
                f"Best and worst examples ({default_kind})",
                "Cyan: the class's boxes; the cross marks the map's maximum (green: a hit, red: a miss). Each "
                "image's own figures are in its folder.",
                images=[(pngs[1], "best"), (pngs[2], "worst")],
            )
        )
    md, html = write_report(out, "Explanation maps: do they point at the defects?", sections)
    json_path = out / "map_quality.json"
    atomic_write_json(
        json_path,
        {
            "source": source,
            "tolerance_px": tolerance,
            "default_kind": default_kind,
            "kinds": dict(kinds),
            "quality": {k: {**s.to_dict(), "reads_as": reading(s.overall)} for k, s in quality.items()},
        },
    )
    return SummaryFiles(md, html, json_path, pngs)
