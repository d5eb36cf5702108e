"""A study's plan on resume: speed settings may change, anything else is another study (named, with a way on)."""

from __future__ import annotations

import pytest

from defectfusion.commands.study_plan import (
    check_same_plan,
    plan_differences,
    plan_study,
    read_plan,
    same_plan,
    with_speed_settings,
    write_plan,
)
from defectfusion.config import load_config
from defectfusion.errors import ConfigError
from tests.helpers import write_train_config


@pytest.fixture
def saved(tmp_path, synth_data):
    """A written plan (two arms x two seeds) and its config file."""
    path = write_train_config(
        tmp_path / "cfg.yml", synth_data, order=["phase1", "phase2"], model={"checkpoint": str(tmp_path / "base")}
    )
    out = tmp_path / "study"
    write_plan(plan_study(load_config(path), out, arms=["text", "continued"], seeds=2), "rule")
    return path, out


def _again(path, out, overrides=(), seeds=2):
    return plan_study(load_config(path, overrides), out, arms=["text", "continued"], seeds=seeds)


def test_a_resume_with_other_threads_or_workers_is_the_same_study_and_uses_them(saved):
    path, out = saved
    new = _again(path, out, ["train.threads=3", "data.num_workers=1", "data.eval_batch_size=2"])
    old = read_plan(out)
    assert plan_differences(old, new) == [] and same_plan(old, new)
    check_same_plan(old, new)
    # nothing over the saved plan until it is accepted; then the runs' configs carry the new speed settings
    assert load_config(old.runs[0].config).train.threads == 1
    write_plan(new, "rule")
    assert {load_config(r.config).train.threads for r in read_plan(out).runs} == {3}


def test_another_learning_rate_is_another_study_named_with_the_command_that_goes_on(saved):
    path, out = saved
    new = _again(path, out, ["phases.phase2.lr=0.5", "train.warmup_steps=7"])
    old = read_plan(out)
    assert not same_plan(old, new)
    assert plan_differences(old, new) == [
        "train.warmup_steps: saved 2, given 7 (every run)",
        "phases.phase2.lr: saved 0.001, given 0.5 (runs text/100pct/seed0, text/100pct/seed1)",
        # the continued arm's phase 2 has one lr per group
        "phases.phase2.lr.class_head: saved 0.001, given 0.5 (runs continued/100pct/seed0, continued/100pct/seed1)",
    ]
    with pytest.raises(ConfigError) as info:
        check_same_plan(old, new)
    message = str(info.value)
    assert message.startswith(f"{out / 'study.json'} plans another study than the one given (train.warmup_steps: ")
    assert "phases.phase2.lr: saved 0.001, given 0.5" in message
    assert f"`defectfusion study --resume --out {out}`" in message and "give another --out" in message
    assert "re-run the study" not in message.lower()
    # the refused plan wrote nothing: the saved study resumes as it was planned
    assert {load_config(r.config).phases["phase2"].lr_for("class_head") for r in read_plan(out).runs} == {1e-3}


def test_a_change_of_arms_or_seeds_is_named(saved):
    path, out = saved
    assert plan_differences(read_plan(out), _again(path, out, seeds=3)) == ["seeds: saved 2, given 3"]
    only_text = plan_study(load_config(path), out, arms=["text"], seeds=2)
    assert plan_differences(read_plan(out), only_text)[0] == 'arms: saved ["text", "continued"], given ["text"]'


def test_a_resume_without_the_config_may_change_speed_settings_only(saved):
    _, out = saved
    plan = with_speed_settings(read_plan(out), ["train.threads=2"])
    assert {r.resolved.train.threads for r in plan.runs} == {2}
    write_plan(plan, "rule")
    assert load_config(read_plan(out).runs[3].config).train.threads == 2
    with pytest.raises(ConfigError, match=r"a resumed study keeps its plan: data.batch_size would make another study"):
        with_speed_settings(read_plan(out), ["data.batch_size=8"])
