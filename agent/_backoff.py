"""Reconnection delays: exponential back-off with full jitter.

The n-th retry waits a uniformly random time in [0, min(cap, base * 2**n)] ("full jitter"), so
thousands of agents that lost the same broker spread their reconnections instead of arriving
together. The count starts over after a stream that stayed up for `stable_after_s`, so an agent
that a broker accepts and then drops at once keeps backing off.
"""

from __future__ import annotations

import dataclasses
import random

from mrzap.errors import InvalidArgument

__all__ = ["Backoff"]


@dataclasses.dataclass
class Backoff:
    """How long to wait before the next connection attempt."""

    base_s: float = 1.0
    """The ceiling of the first delay."""

    cap_s: float = 60.0
    """No delay exceeds this."""

    stable_after_s: float = 60.0
    """A stream that stayed up this long resets the count."""

    rng: random.Random = dataclasses.field(default_factory=random.SystemRandom)
    """The source of jitter."""

    attempts: int = 0
    """Retries since the last stable stream."""

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise InvalidArgument("back-off needs 0 < base <= cap")
        if self.stable_after_s < 0:
            raise InvalidArgument("back-off stable_after must not be negative")

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        # 2**attempts overflows float for huge counts; the cap is reached long before.
        return min(self.cap_s, self.base_s * 2.0 ** min(self.attempts, 64))

    def next_delay(self) -> float:
        """The delay before the next attempt; counts the attempt."""
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempts += 1
        return delay

    def long_delay(self) -> float:
        """A delay after the broker refused the agent's key: between half the cap and the cap."""
        self.attempts += 1
        return self.rng.uniform(self.cap_s / 2, self.cap_s)

    def stream_ended(self, lasted_s: float) -> None:
        """A stream that got its Welcome ended after `lasted_s` seconds."""
        if lasted_s >= self.stable_after_s:
            self.attempts = 0
