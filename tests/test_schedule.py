"""λ(t) of L = L_NTP + λ·L_ACM (§4.3)."""

import pytest

from llamafactory_attok.schedule import acm_weight


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decays_from_initial_to_zero_by_last_step(schedule):
    values = [acm_weight(1.0, schedule, step, 5) for step in range(5)]
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_linear_and_cosine_midpoints():
    assert acm_weight(2.0, "linear", 2, 5) == pytest.approx(1.0)
    assert acm_weight(2.0, "cosine", 2, 5) == pytest.approx(1.0)
    assert acm_weight(1.0, "cosine", 1, 5) == pytest.approx(0.5 * (1 + 2**-0.5))


def test_constant_and_single_step():
    assert acm_weight(0.3, "constant", 7, 8) == 0.3
    assert acm_weight(1.0, "linear", 0, 1) == 1.0
