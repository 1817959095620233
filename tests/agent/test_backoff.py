"""Reconnection back-off: exponential ceilings, full jitter below them, reset when stable."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import Backoff
from mrzap.errors import InvalidArgument


def test_ceilings_double_up_to_the_cap() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(1))
    ceilings = []
    for _ in range(9):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60]


@given(
    base=st.floats(0.01, 5.0),
    cap=st.floats(5.0, 600.0),
    attempts=st.integers(0, 10_000),
    seed=st.integers(0, 2**32),
)
def test_every_delay_is_within_zero_and_its_ceiling(
    base: float, cap: float, attempts: int, seed: int
) -> None:
    backoff = Backoff(base_s=base, cap_s=cap, rng=random.Random(seed), attempts=attempts)
    ceiling = min(cap, base * 2.0 ** min(attempts, 64))
    assert 0.0 <= backoff.next_delay() <= ceiling <= cap


def test_jitter_is_full_not_equal() -> None:
    """Full jitter spreads delays over the whole [0, ceiling], including its lower half."""
    rng = random.Random(7)
    delays = [
        Backoff(base_s=1.0, cap_s=60.0, rng=rng, attempts=5).next_delay() for _ in range(2000)
    ]
    assert min(delays) < 0.05 * 32
    assert max(delays) > 0.95 * 32
    assert 0.45 * 32 < sum(delays) / len(delays) < 0.55 * 32
    assert sum(d < 16 for d in delays) > 800  # half the mass is below half the ceiling


def test_stable_stream_resets_and_short_one_does_not() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, stable_after_s=30.0, attempts=4)
    backoff.stream_ended(5.0)
    assert backoff.ceiling() == 16
    backoff.stream_ended(30.0)
    assert backoff.ceiling() == 1


def test_long_delay_after_refusal_is_at_least_half_the_cap() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(3))
    assert all(30.0 <= backoff.long_delay() <= 60.0 for _ in range(200))


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        Backoff(base_s=0.0)
    with pytest.raises(InvalidArgument):
        Backoff(base_s=10.0, cap_s=5.0)
