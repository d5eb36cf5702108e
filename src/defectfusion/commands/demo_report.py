"""The demo's report: the study's report under the demo's title, with the explanation maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..report.markdown import Section
from ..report.study import write_study_report


def demo_sections(
    out: Path, study: dict[str, Any], class_names: Sequence[str], verdict: Sequence[str], explain_files: Sequence[Path]
) -> tuple[Path, Path]:
    """``out/report/report.md`` and ``.html``: the verdict first, then the study, then the maps."""
    intro = [
        Section(
            "What the demo did",
            "Synthetic images with the six classes of the plan; a tiny DEIMv2 trained from scratch as the "
            "baseline; then a study from that baseline: the three progressive phases with the class "
            "descriptions embedded by MiniLM (text), with random unit vectors as text (random) and the "
            "same training without a fusion head (continued), each with several seeds. Every model was "
            "selected on the validation images and is scored here on test images that selected nothing.",
        )
    ]
    intro.append(Section("Demo verdict", "\n".join(f"- {line}" for line in verdict)))
    explain = [
        Section(
            "Text-visual explanations",
            "For validation images holding both classes of the confusable pair: the encoder's features "
            "projected into the text space and compared with each class's description (one panel per "
            "class), and for each detection its similarity to every class description (the best text "
            "run on test).",
            images=[(p, p.parent.name) for p in explain_files],
        )
    ]
    return write_study_report(
        out / "report",
        study,
        class_names,
        title="defectfusion demo: does text fusion help on synthetic industrial defects?",
        intro=intro,
        extra=explain,
    )
