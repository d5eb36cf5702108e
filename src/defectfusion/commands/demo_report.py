"""The demo's verdict, its summary and its report, computed from the scored models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..engine.bootstrap import Interval
from ..io import read_json
from ..report.compare import confusion_pair
from ..report.plots import plot_ap_bars_many
from ..report.summary import Section, build_report
from ..report.values import fmt_delta, fmt_value
from .grid import GRID_IMAGES, grid_ids, grid_items

PHASES = ("phase1", "phase2", "phase3")


def _metrics(path: Path) -> dict[str, Any]:
    return read_json(path / "metrics.json", "metrics file")


def write_verdict(
    scored: dict[str, dict[str, Any]],
    intervals: dict[str, Interval],
    text: dict[str, Any],
    control: dict[str, Any],
    pair: tuple[str, str] | None = None,
) -> list[str]:
    """Plain sentences computed from the numbers: what they show and what they do not."""
    base, fused, ctrl = (scored[k]["map50"] for k in ("baseline", "text", "control"))
    tb, cb, tc = intervals["text_vs_baseline"], intervals["control_vs_baseline"], intervals["text_vs_control"]
    lines = [
        f"The baseline detector reached mAP@0.5 {fmt_value(base)} on the {scored['baseline']['num_images']} "
        f"synthetic validation images.",
        f"With the class descriptions, the progressive phases end at {fmt_value(fused)} "
        f"({fmt_delta(tb.observed)}; 95% interval {fmt_delta(tb.low)} to {fmt_delta(tb.high)}). "
        f"The control, same head and schedule with random text, ends at {fmt_value(ctrl)} ({fmt_delta(cb.observed)}).",
    ]
    if not math.isfinite(tc.observed):
        lines.append("The text and control runs cannot be compared: a metric is undefined.")
    elif tc.excludes_zero and tc.observed > 0:
        lines.append(
            f"The descriptions add {fmt_delta(tc.observed)} beyond what extra capacity and training give "
            f"(interval {fmt_delta(tc.low)} to {fmt_delta(tc.high)} excludes zero): on this data the text "
            f"itself helped."
        )
    elif tc.excludes_zero:
        lines.append(
            f"The text run is {fmt_delta(tc.observed)} below the control (interval {fmt_delta(tc.low)} to "
            f"{fmt_delta(tc.high)}): on this data the descriptions did not help, random vectors did better."
        )
    else:
        lines.append(
            f"Text vs control: {fmt_delta(tc.observed)}, interval {fmt_delta(tc.low)} to {fmt_delta(tc.high)} "
            f"includes zero, so this run does not show that the descriptions themselves helped; any gain "
            f"over the baseline is as well explained by the extra head and training."
        )
    if tb.excludes_zero and tb.observed > 0:
        lines.append("The gain of the text run over the baseline is larger than the resampling noise.")
    elif not tb.excludes_zero:
        lines.append("The text run's change from the baseline is within the resampling noise of this validation set.")
    if pair is not None and all(n in scored["baseline"]["per_class"] for n in pair):
        a, b = pair
        before = confusion_pair(scored["baseline"], scored["text"], a, b)
        after_ctrl = confusion_pair(scored["baseline"], scored["control"], a, b)
        lines.append(
            f"{a} called {b}: {before.a_as_b_before} with the baseline, {before.a_as_b_after} "
            f"with text fusion, {after_ctrl.a_as_b_after} with the control; {b} called {a}: "
            f"{before.b_as_a_before} / {before.b_as_a_after} / {after_ctrl.b_as_a_after}."
        )
    final = text.get("final") or {}
    lines.append(f"The run's final choice is {final.get('phase', 'n/a')}: {final.get('reason', '')}.")
    lines.append(
        "What this does not show: synthetic images, one seed, a ~1 M-parameter model trained for minutes. "
        "It shows the machinery working end to end and measures the effect on this data only; on real "
        "images the size and even the sign of the text effect must be measured the same way (text vs control)."
    )
    return lines


def demo_summary(
    plan: dict[str, Any],
    baseline: dict[str, Any],
    text: dict[str, Any],
    control: dict[str, Any],
    scored: dict[str, dict[str, Any]],
    intervals: dict[str, Interval],
    verdict: list[str],
    fused_name: str,
) -> dict[str, Any]:
    return {
        "plan": plan,
        "baseline_run": baseline,
        "text_run": text,
        "control_run": control,
        "validation": {k: {"map50": v["map50"], "map": v["map"]} for k, v in scored.items()},
        "intervals": {k: v.to_dict() for k, v in intervals.items()},
        "explained_with": fused_name,
        "verdict": verdict,
    }


def _model_rows(text: dict[str, Any], control: dict[str, Any], out: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, metrics) of the baseline, each text phase's best and each control phase's best."""
    rows = [("baseline", _metrics(Path(text["baseline"]["checkpoint"])))]
    for run, label in ((text, "text"), (control, "control")):
        for phase in PHASES:
            if phase in run["phases"]:
                rows.append((f"{label} {phase}", _metrics(Path(run["phases"][phase]["best_dir"]))))
    return rows


def _table(models: list[tuple[str, dict[str, Any]]]) -> list[dict[str, str]]:
    names = list(models[0][1]["per_class"])
    rows = []
    for label, metrics in models:
        row = {"model": label, "mAP@0.5": fmt_value(metrics["map50"]), "mAP@0.5:0.95": fmt_value(metrics["map"])}
        row.update({name: fmt_value(metrics["per_class"][name]["ap50"]) for name in names})
        rows.append(row)
    return rows


def _gates(run: dict[str, Any]) -> str:
    return "\n".join(f"- after {g['after']}: {g['reason']}" for g in run.get("gates", [])) or "- (no gate applied)"


def write_demo_report(
    out: Path, val, scored, text, control, intervals, verdict, explain_files, detections, pair: tuple[str, str] | None
):
    """The demo's ``report.md`` / ``report.html``: verdict, every model, intervals, gates, maps."""
    report = out / "report"
    models = _model_rows(text, control, out)
    bars = plot_ap_bars_many(
        models,
        report / "plots" / "ap50_all_models.png",
        title="AP@0.5 per class: baseline, text phases, control phases",
    )
    interval_rows = [
        {
            "comparison": f"{iv.a} - {iv.b}",
            "mAP@0.5 difference": fmt_delta(iv.observed),
            "95% interval": f"{fmt_delta(iv.low)} .. {fmt_delta(iv.high)}",
            "draws": str(iv.draws),
        }
        for iv in intervals.values()
    ]
    intro = [
        Section("Verdict", "\n".join(f"- {line}" for line in verdict)),
        Section(
            "Baseline, phases and control",
            "Best checkpoint of each phase on the validation images (EMA weights). Text: the class descriptions "
            "embedded by MiniLM; control: the same head and schedule with random unit vectors as 'text'.",
            table=_table(models),
            images=[(bars, "AP@0.5 per class, every model")],
        ),
        Section(
            "Is the difference real?",
            "Paired bootstrap over validation images (the same resample for every model in a draw).",
            table=interval_rows,
        ),
        Section("Gate decisions", f"Text run:\n{_gates(text)}\n\nControl run:\n{_gates(control)}"),
    ]
    explain = [
        Section(
            "Text-visual explanations",
            "For validation images holding both classes of the confusable pair: the encoder's features "
            "projected into "
            "the text space and compared with each class's description (one panel per class), and for "
            "each detection its similarity to every class description.",
            images=[(p, p.parent.name) for p in explain_files],
        )
    ]
    ids = grid_ids(val, pair, GRID_IMAGES)
    grid = grid_items(val, detections["text"], ids)
    training = sorted((out / "text").glob("*/metrics.jsonl"))
    return build_report(
        report,
        scored["text"],
        baseline=scored["baseline"],
        labels=("baseline", "text fusion"),
        pair=pair or False,
        training=training,
        images=grid,
        class_names=list(val.class_names),
        title="defectfusion demo: text fusion on synthetic industrial defects",
        intro_sections=intro,
        extra_sections=explain,
    )
