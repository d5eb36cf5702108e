"""Whether a train command continues its folder's run: one decision from the folder and the flags."""

from __future__ import annotations

import pytest

from defectfusion.engine.training.run_folder import Continuation, RunFolder, decide_continuation
from defectfusion.errors import ConfigError


def _folder(tmp_path, *files):
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    return RunFolder.inspect(tmp_path)


def test_what_a_folder_holds(tmp_path):
    assert _folder(tmp_path / "a") == RunFolder(tmp_path / "a", False, False)
    assert _folder(tmp_path / "b", "config.yaml") == RunFolder(tmp_path / "b", True, False)
    for made in ("start/metrics.json", "baseline/last/trainer.json", "phase1/result.json", "phase1/best/config.json"):
        assert _folder(tmp_path / made.replace("/", "_"), "config.yaml", made).started, made


def test_the_decision_for_each_folder_and_flag(tmp_path):
    empty, unstarted = _folder(tmp_path / "e"), _folder(tmp_path / "u", "config.yaml")
    started = _folder(tmp_path / "s", "config.yaml", "baseline/result.json")
    assert decide_continuation(empty, False, "all", None) == Continuation(resume=False)
    assert decide_continuation(unstarted, False, "all", None) == Continuation(resume=False, replaces=True)
    assert decide_continuation(unstarted, False, "phase2", "phase1") == Continuation(resume=False, replaces=True)
    assert decide_continuation(started, True, "all", None) == Continuation(resume=True)
    # a later phase of a started run continues it, from its previous phase's best
    assert decide_continuation(started, False, "phase1", "baseline") == Continuation(resume=True)
    with pytest.raises(ConfigError, match="already holds a run: pass --resume"):
        decide_continuation(started, False, "all", None)
    with pytest.raises(ConfigError, match="already holds a run"):
        decide_continuation(started, False, "baseline", None)  # nothing before it to continue from
    with pytest.raises(ConfigError, match="'phase2' continues from 'phase1', which has not finished"):
        decide_continuation(started, False, "phase2", "phase1")
