"""The whole-run estimate uses the steady speed, not the slow first steps."""

from defectfusion.engine.training.eta import StepClock, format_duration


def test_the_estimate_ignores_the_slow_first_steps():
    clock = StepClock(skip=5, window=50)
    assert clock.eta(100) is None  # before any step: unknown, shown as "?"
    for _ in range(5):
        clock.lap(1.5)  # warm-up
    for _ in range(20):
        clock.lap(0.75)
    assert clock.seconds_per_step == 0.75 and clock.eta(400) == 300.0
    clock.lap(30.0)  # one step that waited for a validation
    assert clock.seconds_per_step == 0.75


def test_durations_read_as_people_write_them():
    assert [format_duration(s) for s in (None, 45, 750, 7500)] == ["?", "45s", "12m30s", "2h05m"]
