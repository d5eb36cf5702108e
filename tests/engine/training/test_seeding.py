"""A phase's random state: from the run seed and the phase's name, and back from a checkpoint exactly."""

from __future__ import annotations

import random

import torch

from defectfusion.engine.training.seeding import rng_state, seed_phase, set_rng_state


def test_a_phase_seed_depends_on_the_run_seed_and_the_phase_only():
    seeds = {seed_phase(s, p) for s in (0, 1) for p in ("phase1", "phase2")}
    assert len(seeds) == 4 and seed_phase(0, "phase1") == seed_phase(0, "phase1")
    seed_phase(0, "phase1")
    first = (torch.rand(3), random.random())
    torch.rand(100)  # whatever ran before the phase
    seed_phase(0, "phase1")
    again = (torch.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and first[1] == again[1]


def test_a_saved_state_restores_both_generators_to_the_same_draws():
    seed_phase(7, "phase3")
    torch.rand(5), random.random()
    saved = rng_state()
    expected = (torch.rand(4), random.random())
    torch.rand(9), random.random()
    set_rng_state(saved)
    assert torch.equal(torch.rand(4), expected[0]) and random.random() == expected[1]
