"""The demo's report: the study's report under the demo's title, with the explanation maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..report.explain_summary import quality_rows
from ..report.markdown import Section
from ..report.study import write_study_report

FIGURES = 3  # per-image explanation figures in the report


def demo_sections(
    out: Path,
    study: dict[str, Any],
    class_names: Sequence[str],
    verdict: Sequence[str],
    explained: Any,
    explained_why: str,
    baseline: str,
) -> tuple[Path, Path]:
    """``out/report/report.md`` and ``.html``: what the demo did, then the study (the rule before its verdict),
    then the maps and their quality, then what the demo does not show.

    ``explained``: the :class:`~defectfusion.commands.explain.ExplainResult` of the test images;
    ``baseline``: what the baseline was, in words.
    """
    kinds = explained.images[0].explanation.map_kinds if explained.images else {}
    figures = [i.files.explanation_png for i in explained.images if i.files.explanation_png][:FIGURES]
    intro = [
        Section(
            "What the demo did",
            f"Synthetic images with the six classes of the plan; as the baseline, {baseline}; then a study from "
            "that baseline: the three progressive phases with the class "
            "descriptions embedded by MiniLM (text), with the same descriptions on the wrong classes (shuffled), "
            "with random unit vectors as text (random) and the same training without a fusion head (continued), "
            "each with several seeds. Every model was selected on the validation images and is scored here on "
            "test images that selected nothing.",
        )
    ]
    faithfulness = explained.faithfulness.to_dict()["kinds"] if explained.faithfulness else None
    chosen, why = explained.chosen_kind, explained.chosen_why
    tested = explained.faithfulness.to_dict()["detections"] if explained.faithfulness else 0
    explain = [
        Section(
            "Explanations: which maps show more than where the detections are",
            f"Explained on {len(explained.images)} test images: the text arm's {explained_why}. Every map kind "
            "is scored against the boxes (the pointing game: the class map's maximum inside a box of that class; "
            "the AUROC of map values on the objects against the background) beside the same numbers for a control "
            "that knows only the detections (their boxes drawn as blobs), and by the deletion test on "
            f"{tested} detections (remove the pixels a map ranks first: does the detection's score fall faster "
            "than when its box is removed first?). 95% intervals over images. "
            + (f"Default map kind: {why}." if chosen else f"No map kind is the default: {why}."),
            table=quality_rows(explained.quality, chosen, kinds, explained.comparisons, faithfulness),
            images=[(p, "") for p in (explained.summary.pngs if explained.summary else [])],
        ),
        Section(
            "Per detection",
            "For the first test images: per box, an explanation map over the image (titled with what it computes), "
            "what decided it against the look-alike class, and how its score was made (the detector's own term, the "
            "descriptions' term, the box-quality term: an exact split).",
            images=[(f, f.parent.name) for f in figures],
            level=3,
        ),
        Section("What the demo does not show", verdict[-1]),
    ]
    return write_study_report(
        out / "report",
        study,
        class_names,
        title="defectfusion demo: does text fusion help on synthetic industrial defects?",
        intro=intro,
        extra=explain,
    )
