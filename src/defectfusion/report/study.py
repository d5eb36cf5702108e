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
    if iv.get("difference") is None:
        return MISSING
    digits = 1 if str(iv.get("metric", "")).startswith("confusion:") else 3  # counts, not fractions
    if iv.get("low") is None:
        return f"{iv['difference']:+.{digits}f} [undefined]"
    return f"{iv['difference']:+.{digits}f} [{iv['low']:+.{digits}f}, {iv['high']:+.{digits}f}]"


def _p(value: float | None) -> str:
    return MISSING if value is None else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def _arms_table(entry: Mapping[str, Any], scored_on: str) -> list[dict[str, str]]:
    rows = []
    for arm, s in entry["arms"].items():
        row = {
            "arm": arm,
            "seeds": str(s["seeds"]) if arm != "baseline" else "(one model)",
            "mAP@0.5": _pm(s["map50_mean"], s["map50_sd"]),
            "mAP@0.5:0.95": _pm(s["map_mean"], s["map_sd"]),
            "scored on": scored_on,
        }
        if s.get("pair_counts") is not None:
            row["pair confusions (a→b, b→a)"] = f"{s['pair_counts'][0]:.1f}, {s['pair_counts'][1]:.1f}"
        rows.append(row)
    return rows


def _primary_rows(entry: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for iv in entry["primary"]:
        seed, image = iv.get("seed_variance"), iv.get("image_variance") or 0.0
        rows.append(
            {
                "difference": f"{iv['a']} − {iv['b']}",
                "mAP@0.5 [95% interval]": _iv(iv),
                "sd from seeds": "unknown (1 seed)" if seed is None else f"{seed**0.5:.4f}",
                "sd from images": f"{image**0.5:.4f}",
                "df": MISSING if iv.get("df") is None else f"{iv['df']:.1f}",
                "p": _p(iv.get("p_value")),
            }
        )
    return rows


def _power_rows(entry: Mapping[str, Any]) -> list[dict[str, str]]:
    def need(value: int | None, now: int) -> str:
        if value is None:
            return "out of reach"
        return f"{now} already do" if value <= now else str(value)

    rows = []
    for p in entry.get("power") or ():
        row = {
            "difference": f"{p['a']} − {p['b']}",
            "found with 80% power from": f"±{p['detectable']:.3f}",
        }
        for target, seeds in p["seeds_for"].items():
            row[f"for {float(target):.3f}: seeds per arm"] = need(seeds, p["seeds"])
            row[f"for {float(target):.3f}: test images"] = need(p["images_for"][target], p["images"])
        rows.append(row)
    return rows


def _usage_cell(usage: Mapping[str, Any] | None, key: str, percent: bool = True) -> str:
    value = None if usage is None else usage.get(key)
    if value is None:
        return MISSING
    return f"{value:.1%}" if percent else f"{value:.3f}"


def _runs_rows(entry: Mapping[str, Any], split: str) -> list[dict[str, str]]:
    rows = []
    for infos in entry["runs"].values():
        for r in infos:
            usage = r.get("text_usage")
            rows.append(
                {
                    "run": r["key"],
                    f"{split} mAP@0.5": _pm(r.get("map50"), None),
                    "final model from": r.get("final_phase") or MISSING,
                    "gate (last layer)": _usage_cell(usage, "layer_gate", percent=False),
                    "text share of the class logit": _usage_cell(usage, "text_share_centered"),
                    "with the bias": _usage_cell(usage, "text_share"),
                    "detections whose class the text changed": _usage_cell(usage, "flip_share"),
                }
            )
    return rows


def metric_label(key: str) -> str:
    """How a compared metric's key reads in a table: ``ap50:crack`` -> ``AP@0.5 crack``."""
    if key == "map50":
        return "mAP@0.5"
    if key == "map":
        return "mAP@0.5:0.95"
    kind, _, rest = key.partition(":")
    if kind == "ap50":
        return f"AP@0.5 {rest}"
    if kind == "confusion":
        a, _, b = rest.partition("->")
        return f"{a} called {b} (count)"
    return key


def _cell(e: Mapping[str, Any]) -> str:
    return f"{_iv(e)} p {_p(e.get('p_holm'))}"


def _exploratory_sections(entry: Mapping[str, Any], suffix: str) -> list[Section]:
    """One table per family: pairs as rows for the overall metrics; per class and for the confusable pair,
    the metric as rows and the comparisons as columns."""
    families: dict[str, list[Mapping[str, Any]]] = {}
    for e in entry["exploratory"]:
        families.setdefault(e["family"], []).append(e)
    sections = []
    for family, rows in families.items():
        by_metric: dict[str, dict[str, str]] = {}
        for e in rows:
            metric = metric_label(e["metric"])
            if family.startswith(("per-class", "confusable")):
                by_metric.setdefault(metric, {"": metric})[f"{e['a']} − {e['b']}"] = _cell(e)
            else:
                by_metric[f"{metric} {e['a']} − {e['b']}"] = {
                    "difference": f"{e['a']} − {e['b']}",
                    "value [95%, uncorrected]": _iv(e),
                    "p (Holm)": _p(e.get("p_holm")),
                }
        sections.append(Section(f"{family}{suffix}", table=list(by_metric.values()), level=4))
    return sections


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
            faithful = o.get("faithfulness") or {}
            rows.append(
                {
                    "arm": arm,
                    "map kind": kind,
                    "pointing game": cell(o, "pointing_game"),
                    "chance": chance,
                    "AUROC": cell(o, "auroc"),
                    "pairs": str(o.get("pairs", 0)),
                    "against the detections-only control": (o.get("vs_control") or {}).get("reading") or MISSING,
                    "class-specific?": (o.get("class_specificity") or {}).get("reading") or MISSING,
                    "deletion test": faithful.get("reading") or "not run",
                }
            )
    return rows


def _fraction_sections(
    entry: Mapping[str, Any], label: str, suffix: str, split: str, scored: str, images: int, out: Path
) -> list[Section]:
    verdict = "\n".join(f"- {s}" for s in entry["verdict"]["sentences"])
    if entry.get("notes"):
        verdict += "\n\nBefore believing it:\n" + "\n".join(f"- {n}" for n in entry["notes"])
    sections = [Section(f"The numbers{suffix}", f"Every number here is measured on the {scored}.")]
    if entry["primary"]:
        forest = plot_forest(
            [iv for iv in entry["primary"] if iv.get("low") is not None],
            out / "plots" / f"forest_{label}.png",
            f"The rule's comparisons: {split} mAP@0.5{suffix}",
            xlabel=f"difference of {split} mAP@0.5",
        )
        sections.append(
            Section(
                f"The rule's comparisons{suffix}",
                "Each interval covers the training seeds (pooled over the trained arms; the larger of that and an "
                "arm's own spread) and the test images (paired bootstrap); df: degrees of freedom of its t quantile. "
                "An sd from images of 0: the two arms' image-by-image gains differ no more than two runs of one arm "
                "do (a negative estimate counts as 0), so the seeds carry the interval.",
                table=_primary_rows(entry),
                images=[(forest, "observed difference and 95% interval; green: above 0, red: below, grey: across")],
                level=3,
            )
        )
    sections.append(
        Section(
            f"Arms{suffix}",
            f"Mean ± sd over seeds, every number on the {scored}.",
            table=_arms_table(entry, split),
            level=3,
        )
    )
    sections.append(
        Section(
            f"Runs{suffix}",
            "Where each run's final model came from (chosen on validation) and how much its fusion head used the text "
            f"on the {split} detections (the manipulation check: mean |text term| / mean |detector term| of the "
            "predicted class's logit, each with its mean over classes taken off, what can change which class wins; "
            "the same with the gated bias, which moves every class alike; and the share of confident detections "
            "whose class the text term changed).",
            table=_runs_rows(entry, split),
            level=3,
        )
    )
    # the verdict once, after the numbers it follows from (the rule stands above them all)
    sections.append(Section(f"Verdict{suffix}", verdict))
    if entry.get("power"):
        sections.append(
            Section(
                f"What this study can see{suffix}",
                f"The smallest true difference each comparison finds 4 times in 5, and what it would take to find "
                f"0.010 or 0.035 mAP@0.5 (the plan's target gain is +0.035 to +0.065): more seeds per arm at "
                f"this study's {images} {split} images, or more {split} images at its seeds. 'out of reach': the other "
                f"noise source alone is too large.",
                table=_power_rows(entry),
                level=3,
            )
        )
    if entry["exploratory"]:
        sections.append(
            Section(
                f"Exploratory{suffix}: not decided by the rule",
                "Other metrics, classes and pairs: each cell is a difference with its uncorrected 95% interval (about "
                "1 in 20 excludes 0 by chance) and its p-value Holm-adjusted within the table. Read these as questions "
                "for the next study, not findings.",
                level=3,
            )
        )
        sections.extend(_exploratory_sections(entry, suffix))
    if entry.get("subset"):
        subset = entry["subset"]
        boxes = ", ".join(f"{c} {n}" for c, n in subset["boxes"].items())
        sections.append(
            Section(
                f"Training subset{suffix}",
                f"{subset['images']} training images ({boxes} boxes). "
                + (
                    "This fraction's baseline was trained on these images too (--fraction-baselines)."
                    if subset.get("own_baseline")
                    else "The baseline was trained on every training image: this measures fine-tuning data, not "
                    "training data (--fraction-baselines trains a baseline per fraction)."
                ),
                level=3,
            )
        )
    if entry.get("skipped_phases"):
        skipped = "; ".join(f"{arm}: {', '.join(p)}" for arm, p in entry["skipped_phases"].items())
        sections.append(Section(f"Skipped phases{suffix}", f"Phases with nothing left to train: {skipped}.", level=3))
    return sections


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
    split = scored.get("split") or ("test" if scored["test"] else "val")
    sections = [*intro, Section("The rule (written before the numbers)", summary["rule"])]
    if scored.get("note"):
        sections.append(Section("Caution", scored["note"]))
    curves: dict[str, list[tuple[float, float | None, float | None]]] = {}
    for label, entry in summary["fractions"].items():
        suffix = f" ({label} of the training images)" if len(summary["fractions"]) > 1 else ""
        sections.extend(_fraction_sections(entry, label, suffix, split, where, scored["images"], out))
        for arm, s in entry["arms"].items():
            curves.setdefault(arm, []).append((entry["fraction"], s["map50_mean"], s["map50_sd"]))
    if len(summary["fractions"]) > 1:
        curve = plot_learning_curve(
            curves, out / "plots" / "learning_curve.png", f"{split.capitalize()} mAP@0.5 vs training fraction", split
        )
        sections.append(Section("Learning curve", images=[(curve, f"{split} mAP@0.5 vs training fraction")]))
    if summary.get("map_quality"):
        sections.append(
            Section(
                "Explanation maps against the boxes and a detections-only control",
                "Each fused arm's first seed with a fused model, on the scoring images: pointing game (the class map's "
                "maximum inside one of that class's boxes) beside chance, and the AUROC of map values on the objects "
                "against the background (0.5: no information), with 95% intervals over images; then each kind "
                "against a control that knows only the detections (their boxes as blobs), each class's map against "
                "the other classes' boxes, and, for the text arm, the deletion test (does removing what the map ranks "
                "first lower the detection's score faster than removing its box?).",
                table=_map_quality_rows(summary["map_quality"]),
            )
        )
    sections.extend(extra)
    return write_report(out, title or f"Study {summary['name']}: did the descriptions help?", sections)
