"""A study's report: the rule, the verdict, arms x metrics, forest plots, per-class deltas, learning curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .markdown import Section, write_report
from .plots.study import plot_forest, plot_learning_curve
from .values import MISSING


def _pm(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return MISSING
    return f"{mean:.3f}" + (f" ± {sd:.3f}" if sd else "")


def _iv(iv: Mapping[str, Any]) -> str:
    return f"{iv['difference']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]"


def _arms_table(entry: Mapping[str, Any], scored_on: str) -> list[dict[str, str]]:
    rows = []
    for arm, s in entry["arms"].items():
        row = {
            "arm": arm,
            "seeds": str(s["seeds"]),
            "mAP@0.5": _pm(s["map50_mean"], s["map50_sd"]),
            "mAP@0.5:0.95": _pm(s["map_mean"], s["map_sd"]),
            "scored on": scored_on,
        }
        if s.get("pair_counts") is not None:
            row["pair confusions (a→b, b→a)"] = f"{s['pair_counts'][0]:.1f}, {s['pair_counts'][1]:.1f}"
        rows.append(row)
    return rows


def _difference_row(c: Mapping[str, Any]) -> dict[str, str]:
    row = {"difference": f"{c['a']} − {c['b']}", "mAP@0.5": _iv(c["map50"]), "mAP@0.5:0.95": _iv(c["map"])}
    for iv in c.get("pair_confusions") or ():
        row[f"{iv['metric']} (count)"] = _iv(iv)
    return row


def _per_class_table(comparisons: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> list[dict[str, str]]:
    wanted = [c for c in comparisons if c["a"] == "text" and c["b"] in ("baseline", "random", "continued")]
    rows = []
    for name in class_names:
        row = {"class": name}
        for c in wanted:
            row[f"{c['a']} − {c['b']}"] = _iv(c["per_class_ap50"][name])
        rows.append(row)
    return rows


def _map_quality_rows(quality: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    def cell(o: Mapping[str, Any], key: str) -> str:
        value, iv = o.get(key), o.get(f"{key}_interval")
        if value is None:
            return MISSING
        return f"{value:.2f}" + (f" [{iv[0]:.2f}, {iv[1]:.2f}]" if iv else "")

    rows = []
    for arm, kinds in quality.items():
        for kind, o in kinds.items():
            chance = MISSING if o.get("chance") is None else f"{o['chance']:.2f}"
            rows.append(
                {
                    "arm": arm,
                    "map kind": kind,
                    "pointing game": cell(o, "pointing_game"),
                    "chance": chance,
                    "AUROC": cell(o, "auroc"),
                    "pairs": str(o.get("pairs", 0)),
                }
            )
    return rows


def write_study_report(
    out: str | Path,
    summary: Mapping[str, Any],
    class_names: Sequence[str],
    *,
    title: str | None = None,
    intro: Sequence[Section] = (),
    extra: Sequence[Section] = (),
) -> tuple[Path, Path]:
    """``out/report.md`` + ``out/report.html`` of a study's ``summary.json`` (``intro`` first, ``extra`` last)."""
    out = Path(out)
    scored = summary["scored_on"]
    where = (
        f"test images ({scored['images']}; they selected nothing)"
        if scored["test"]
        else f"validation images ({scored['images']}): selected on these, optimistic"
    )
    sections = [*intro, Section("The rule (written before the numbers)", summary["rule"])]
    if scored.get("note"):
        sections.append(Section("Caution", scored["note"]))
    curves: dict[str, list[tuple[float, float | None, float | None]]] = {}
    for label, entry in summary["fractions"].items():
        suffix = f" ({label} of the training images)" if len(summary["fractions"]) > 1 else ""
        verdict = "\n".join(f"- {s}" for s in entry["verdict"]["sentences"])
        res = entry["resolution"]
        verdict += (
            f"\n\nSmallest difference this set resolves: ±{res['half_width']:.3f} mAP@0.5 "
            f"({res['test_images']} images; about {res['images_to_halve']} would halve it)."
        )
        sections.append(Section(f"Verdict{suffix}", verdict))
        sections.append(
            Section(
                f"Arms{suffix}",
                f"Mean ± sd over seeds, every number on the {where}.",
                table=_arms_table(entry, "test" if scored["test"] else "val (selected: optimistic)"),
                level=3,
            )
        )
        forest = plot_forest(
            [c["map50"] for c in entry["comparisons"]],
            out / "plots" / f"forest_{label}.png",
            f"Differences of test mAP@0.5{suffix}",
        )
        rows = [_difference_row(c) for c in entry["comparisons"]]
        sections.append(
            Section(
                f"Differences{suffix}",
                "95% hierarchical bootstrap intervals (seeds within each arm, then images, paired).",
                table=rows,
                images=[(forest, "observed difference and 95% interval")],
                level=3,
            )
        )
        per_class = _per_class_table(entry["comparisons"], class_names)
        if per_class and len(per_class[0]) > 1:
            sections.append(Section(f"Per-class AP@0.5 differences{suffix}", table=per_class, level=3))
        if entry.get("skipped_phases"):
            skipped = "; ".join(f"{arm}: {', '.join(p)}" for arm, p in entry["skipped_phases"].items())
            sections.append(
                Section(f"Skipped phases{suffix}", f"Phases with nothing left to train: {skipped}.", level=3)
            )
        for arm, s in entry["arms"].items():
            curves.setdefault(arm, []).append((entry["fraction"], s["map50_mean"], s["map50_sd"]))
        runs = "\n".join(f"- {arm}: " + ", ".join(f"`{f}`" for f in folders) for arm, folders in entry["runs"].items())
        sections.append(Section(f"Run folders{suffix}", runs, level=3))
    if len(summary["fractions"]) > 1:
        curve = plot_learning_curve(curves, out / "plots" / "learning_curve.png")
        sections.append(Section("Learning curve", images=[(curve, "test mAP@0.5 vs training fraction")]))
    if summary.get("map_quality"):
        sections.append(
            Section(
                "Explanation maps: do they point at the defects?",
                "Each fused arm's first seed, on the scoring images: pointing game (the class map's maximum "
                "inside one of that class's boxes) beside chance, and the AUROC of map values on the objects "
                "against the background (0.5: no information), with 95% intervals over images.",
                table=_map_quality_rows(summary["map_quality"]),
            )
        )
    sections.extend(extra)
    return write_report(out, title or f"Study {summary['name']}: did the descriptions help?", sections)
