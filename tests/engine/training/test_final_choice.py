"""A run's final model: chosen among its reference and its phases' best, read from summary.json's entries."""

from __future__ import annotations

from defectfusion.engine.training.final_choice import FinalChoice, candidates, choose_final
from defectfusion.structures import Scored
from tests.helpers import outcome_entry


def _summary(baseline_source="checkpoints/phase1"):
    return {
        "start": {"source": "random initialisation", "map50": 0.1, "map": 0.05},
        "baseline": {"source": baseline_source, "checkpoint": "runs/x/baseline/best", "map50": 0.6, "map": 0.4},
        "phases": {
            "baseline": outcome_entry("baseline", 0.6, "runs/x/baseline/best"),
            "phase1": outcome_entry("phase1", 0.6, "runs/x/phase1/best", best_map=0.41),
        },
    }


def test_the_reference_comes_first_is_not_listed_twice_and_wins_ties(tmp_path):
    among = candidates(_summary("phase baseline"))  # the baseline is this run's own first phase
    assert [(c.label, c.reference) for c in among] == [("baseline", True), ("phase1", False)]
    final = choose_final(_summary("phase baseline"), tmp_path)
    assert final.phase == "baseline" and "no phase beat the baseline" in final.reason  # a tie keeps it
    assert list(final.to_dict()) == ["phase", "checkpoint", "source", "map50", "map", "reason"]


def test_without_a_baseline_the_start_is_the_reference(tmp_path):
    summary = {**_summary(), "baseline": None}
    summary["phases"] = {"phase1": outcome_entry("phase1", 0.2, "runs/x/phase1/best", best_map=0.1)}
    final = choose_final(summary, tmp_path)
    assert isinstance(final, FinalChoice) and final.phase == "phase1" and "vs the start (0.1000)" in final.reason
    assert choose_final({"phases": {}}, tmp_path) is None


def test_a_summary_entry_reads_as_scored_with_the_rest_kept():
    entry = {"source": "s", "map50": 0.5, "map": None, "per_class_ap50": {"a": 0.5}, "results": "r.json"}
    scored = Scored.from_dict(entry)
    assert (scored.map50, scored.map, scored.source, scored.checkpoint) == (0.5, None, "s", None)
    assert scored.extra == {"per_class_ap50": {"a": 0.5}, "results": "r.json"}
    assert Scored.from_dict(None) is None and Scored.from_dict({}) is None
