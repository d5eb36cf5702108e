"""What a phase records of its evaluations: metrics.jsonl, results.csv, and a resumed phase's clean-up."""

from __future__ import annotations

import torch

from defectfusion.engine.training.phase_log import CSV_COLUMNS, PhaseLog, evaluation_record
from tests.helpers import fake_metrics

METRICS = fake_metrics(
    [0.9, 0.5, 0.4, 0.8], [[5, 0, 0, 0, 1], [0, 4, 1, 0, 0], [0, 1, 3, 0, 1], [0, 0, 0, 6, 0], [1, 0, 0, 0, 0]]
)


def _record(epoch, optimizer):
    return evaluation_record("phase1", epoch, 10 * epoch, METRICS, 0.5, optimizer, improved=epoch == 1)


def test_a_record_per_evaluation_and_the_table_beside_it(tmp_path):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    log = PhaseLog(tmp_path / "phase1", "phase1", tensorboard=False)
    log.open(fresh=True)
    start = _record(0, optimizer)
    assert start["train_loss"] is None and start["lr"] is None and start["base_lr"] == 1e-3  # epoch 0: no training
    assert start["map50"] == METRICS.map50 and start["per_class_ap50"]["NORMAL"] == 0.9
    for epoch in range(3):
        log.append(_record(epoch, optimizer))
    assert [r["epoch"] for r in log.records()] == [0, 1, 2]
    rows = (tmp_path / "phase1" / "results.csv").read_text().splitlines()
    assert rows[0].split(",") == CSV_COLUMNS and len(rows) == 4


def test_a_resumed_phase_drops_what_came_after_its_save_and_a_torn_line(tmp_path):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    log = PhaseLog(tmp_path, "phase1", tensorboard=False)
    log.open(fresh=True)
    for epoch in range(3):
        log.append(_record(epoch, optimizer))
    with open(log.path, "a", encoding="utf-8") as f:
        f.write('{"phase": "phase1", "epo')  # killed while writing
    assert [r["epoch"] for r in log.keep_through(1)] == [0, 1]
    assert [r["epoch"] for r in log.records()] == [0, 1] and len(log.path.read_text().splitlines()) == 2
    log.open(fresh=True)  # a phase started again from scratch
    assert log.records() == [] and not (tmp_path / "results.csv").exists()
