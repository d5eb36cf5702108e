"""What a phase gives back (result.json, the scores it keeps) and where a checkpoint's run folder is."""

from __future__ import annotations

import json
from dataclasses import asdict

from defectfusion.engine.training.phase_records import PhaseOutcome, Score, find_run_folder


def test_a_phase_outcome_reads_back_from_its_result_json(tmp_path):
    outcome = PhaseOutcome("phase1", 2, 0.61, 0.4, 0.55, 0.35, 3, "completed 3 epochs", "run/phase1/best", 12.5, 3, 0.6)
    (tmp_path / "result.json").write_text(json.dumps(asdict(outcome)))
    assert PhaseOutcome.read(tmp_path / "result.json") == outcome


def test_a_score_is_stored_with_its_epoch_and_a_start_without():
    assert Score(0.5, 0.3, epoch=4).to_dict() == {"map50": 0.5, "map": 0.3, "epoch": 4}
    assert Score(0.5, None).to_dict(epoch=False) == {"map50": 0.5, "map": None}


def test_the_run_folder_of_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    for name in ("summary.json", "config.yaml"):
        (run / "phase1" / "best").mkdir(parents=True, exist_ok=True)
        (run / name).write_text("{}")
    (run / "final").mkdir()
    assert find_run_folder(run / "final") == run.resolve()
    assert find_run_folder(run / "phase1" / "best") == run.resolve()
    assert find_run_folder(tmp_path / "elsewhere") is None and find_run_folder(None) is None


def test_an_entry_written_before_fields_were_added_still_reads():
    entry = asdict(PhaseOutcome("phase1", 2, 0.61, 0.4, 0.55, 0.35, 3, "completed 3 epochs", "b", 12.5))
    for newer in ("last_epoch", "last_map50", "last_map", "frozen_trunk"):
        del entry[newer]
    outcome = PhaseOutcome.from_dict({**entry, "a field of a later version": 1})
    assert outcome.best_map50 == 0.61 and outcome.frozen_trunk == "" and outcome.last_map50 is None
