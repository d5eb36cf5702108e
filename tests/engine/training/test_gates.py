"""Gates between phases: the decision, its reasons, its JSON, and the user's override."""

from __future__ import annotations

from defectfusion.config import GateConfig
from defectfusion.engine.training.gates import GateDecision, apply_gate, override_gate


def test_gates_decide_with_reasons():
    gate = GateConfig(min=0.80, max=0.82)
    assert apply_gate(gate, "phase2", 0.79, None).proceed is False
    stop = apply_gate(gate, "phase2", 0.83, None)
    assert stop.proceed is False and "target reached" in stop.reason
    assert apply_gate(gate, "phase2", 0.81, None).proceed is True
    relative = GateConfig(min=0.0, relative_to_baseline=True)
    assert apply_gate(relative, "phase1", 0.50, 0.51).proceed is False
    assert apply_gate(GateConfig(min=0.8), "phase1", None, None).proceed is False


def test_a_gate_decision_keeps_summary_json_s_schema_and_reads_back():
    stop = apply_gate(GateConfig(min=0.80), "phase1", 0.79, None, epoch=3)
    assert list(stop.to_dict()) == [
        "after", "metric", "compared_value", "epoch", "value", "min", "max", "baseline", "compared", "proceed", "reason"
    ]  # fmt: skip
    gone_past = override_gate(stop)
    saved = gone_past.to_dict()
    assert saved["proceed"] is True and saved["overridden"]["gate_said"] == stop.reason and "go_on" not in saved
    assert GateDecision.from_dict(saved) == gone_past and GateDecision.from_dict(stop.to_dict()) == stop
