"""Learning-rate schedules: known values at the stage's edges, for each schedule."""

from __future__ import annotations

import pytest

from vqcausal.config import TrainConfig
from vqcausal.errors import VQCausalError
from vqcausal.schedule import lr_factor


def test_constant_is_one_everywhere() -> None:
    assert {lr_factor("constant", s, 0, 100, 10, 0.0, 0.2) for s in range(100)} == {1.0}


def test_cosine_warms_up_then_ends_at_final() -> None:
    factors = [lr_factor("cosine", s, 0, 100, 10, 0.05, 0.2) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[99] == pytest.approx(0.05, abs=1e-3)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))


def test_wsd_holds_the_full_rate_then_decays_linearly_to_final() -> None:
    # stage 2 of a run: global steps 6,000 - 9,999, the last fifth (800 steps) decays
    factors = [lr_factor("wsd", s, 6000, 10000, 100, 0.05, 0.2) for s in range(6000, 10000)]
    assert factors[0] == pytest.approx(0.01)  # warm-up
    assert set(factors[100:3200]) == {1.0}  # stable
    assert factors[3200] == pytest.approx(1 - 0.95 / 800)  # first decaying step
    assert factors[3599] == pytest.approx(1 - 0.95 * 400 / 800)
    assert factors[-1] == pytest.approx(0.05)  # the stage's last step runs at lr_final
    assert all(a > b for a, b in zip(factors[3199:], factors[3200:], strict=False))


def test_wsd_decay_fraction_one_is_a_linear_schedule() -> None:
    factors = [lr_factor("wsd", s, 0, 10, 0, 0.0, 1.0) for s in range(10)]
    assert factors == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])


def test_unknown_schedule_and_bad_fraction_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor("step", 0, 0, 10, 0, 0.0, 0.2)
    with pytest.raises(VQCausalError, match="lr_decay_fraction"):
        TrainConfig(lr_decay_fraction=0.0)
    with pytest.raises(VQCausalError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
