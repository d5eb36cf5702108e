"""What a study reads of a finished run: one record from its summary.json."""

from __future__ import annotations

import json

from defectfusion.engine.training.run_record import entry_metrics_file, read_run_record
from tests.helpers import outcome_entry


def _write(folder, test_final):
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "final": {"phase": "phase2", "reason": "best on validation", "map50": 0.5},
        "phases": {
            "phase1": outcome_entry("phase1", 0.4, folder / "phase1" / "best"),
            "phase2": outcome_entry("phase2", 0.5, "p2"),
        },
        "test": {"final": test_final} if test_final else None,
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def test_a_run_record_names_its_final_model_and_its_test_files(tmp_path):
    assert read_run_record(tmp_path / "none") is None  # not started, or killed before its summary
    _write(tmp_path / "new", {"results": "t/final_results.json", "metrics": "t/m.json", "text_usage": {"gates": [1]}})
    record = read_run_record(tmp_path / "new")
    assert (record.final_phase, record.final_reason, record.finished) == ("phase2", "best on validation", True)
    assert str(record.test_metrics) == "t/m.json" and str(record.test_results) == "t/final_results.json"
    assert record.text_usage == {"gates": [1]} and list(record.phase_bests) == ["phase1", "phase2"]
    # a run written before its test entry named the metrics file: the file beside the results
    _write(tmp_path / "old", {"results": "t/final_results.json"})
    assert str(read_run_record(tmp_path / "old").test_metrics) == "t/final_metrics.json"
    assert str(entry_metrics_file({"results": "t/baseline_results.json"})) == "t/baseline_metrics.json"
    assert entry_metrics_file({}) is None
    _write(tmp_path / "no_test", None)
    no_test = read_run_record(tmp_path / "no_test")
    assert no_test.test_results is None and no_test.test_metrics is None and no_test.text_usage is None
