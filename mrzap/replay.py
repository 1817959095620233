"""The SYN replay cache (PROTOCOL.md section 5, step 5).

A `(grant_id, client_nonce)` pair is remembered until its grant's `start_by` has passed; after
that the grant check itself refuses the SYN, so the entry can go.
"""

from __future__ import annotations

import heapq

from .clock import Clock, SystemClock
from .errors import ResourceExhausted
from .verification import Reason, VerificationError

__all__ = ["ReplayCache"]


class ReplayCache:
    """Remembers SYNs seen, and refuses one seen before."""

    def __init__(self, clock: Clock | None = None, max_entries: int = 1_000_000) -> None:
        self._clock = clock or SystemClock()
        self._max_entries = max_entries
        self._seen: set[tuple[str, bytes]] = set()
        self._expiry: list[tuple[float, str, bytes]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_remember(self, grant_id: str, client_nonce: bytes, keep_until: float) -> None:
        """Remember the pair until `keep_until`; raise SYN_REPLAYED if it was seen already.

        When full of live entries it refuses new SYNs (fails closed) rather than forget one.
        """
        self._forget_expired()
        entry = (grant_id, client_nonce)
        if entry in self._seen:
            raise VerificationError(Reason.SYN_REPLAYED, "this SYN was used before")
        if len(self._seen) >= self._max_entries:
            raise ResourceExhausted("too many recent connection attempts; try again shortly")
        self._seen.add(entry)
        heapq.heappush(self._expiry, (keep_until, grant_id, client_nonce))

    def _forget_expired(self) -> None:
        now = self._clock.now()
        while self._expiry and self._expiry[0][0] <= now:
            _, grant_id, nonce = heapq.heappop(self._expiry)
            self._seen.discard((grant_id, nonce))
