"""What the broker needs from the registry, as a Protocol so the broker never imports it.

`registry.Registry` implements it structurally; `broker.testing.MemoryDirectory` is the in-memory
fake the broker's unit tests use.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

__all__ = ["TargetDirectory"]


class TargetDirectory(Protocol):
    """What the broker's control stream needs from the registry."""

    async def agent_public_key(self, target_id: str) -> bytes:
        """The raw Ed25519 public key the target registered with. Raises NotFound for an unknown
        or deleted target id (and for a malformed id)."""

    async def agent_connected(self, target_id: str, broker_id: str, address: str) -> None:
        """The agent authenticated its control stream: the target becomes ONLINE (from
        REGISTERED, OFFLINE or TERMINATED), last_seen is now, the broker id is recorded;
        the transition is time-stamped in the state history and written to the audit log."""

    async def agents_seen(self, target_ids: Collection[str], when: float) -> Collection[str]:
        """Keepalives arrived: set last_seen (Unix seconds) for all of them in one statement.
        The broker calls it in batches (every few seconds), never once per keepalive. Returns
        the ids among them that no longer exist (deleted targets): the broker ends their streams,
        so a deletion takes effect within a keepalive interval on whichever broker holds them."""

    async def agent_disconnected(self, target_id: str, broker_id: str, reason: str) -> None:
        """The stream ended: an ONLINE target still routed to `broker_id` becomes OFFLINE
        (state history + audit). A stale call for a target now on another broker changes nothing."""

    async def agent_refused(self, target_id: str, message: str, address: str) -> None:
        """Record a refused agent (unknown key, bad signature, claiming another target's id,
        malformed or oversized message...) as an audit event with outcome DENIED; `target_id`
        may be "" when none was named or it does not exist."""
