"""An in-memory `TargetDirectory` for the broker's tests.

It stands in for the registry where a test exercises only the broker; it keeps the states the
registry would (ONLINE/OFFLINE and the broker route) and records every call, so tests can check
that a refusal changed nothing and that keepalives arrived in batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from mrzap.errors import NotFound

__all__ = ["MemoryDirectory", "MemoryTarget"]


@dataclasses.dataclass
class MemoryTarget:
    """A registered target as the fake registry sees it."""

    public_key: bytes
    state: str = "REGISTERED"
    broker_id: str = ""
    last_seen: float | None = None


@dataclasses.dataclass
class MemoryDirectory:
    """Targets in a dictionary, and a log of every call the broker made."""

    targets: dict[str, MemoryTarget] = dataclasses.field(default_factory=dict)
    refusals: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    """(target_id, message, address) of each refused agent."""
    connections: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    """(target_id, broker_id, address) of each authenticated stream."""
    disconnections: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    """(target_id, broker_id, reason) of each ended stream."""
    seen_batches: list[tuple[frozenset[str], float]] = dataclasses.field(default_factory=list)
    """(target ids, when) of each agents_seen call."""

    def add(self, target_id: str, public_key: bytes) -> None:
        """Register a target."""
        self.targets[target_id] = MemoryTarget(public_key)

    async def agent_public_key(self, target_id: str) -> bytes:
        """The key of a known target."""
        target = self.targets.get(target_id)
        if target is None:
            raise NotFound(f"no target {target_id!r}")
        return target.public_key

    async def agent_connected(self, target_id: str, broker_id: str, address: str) -> None:
        """The target goes ONLINE on `broker_id`."""
        self.connections.append((target_id, broker_id, address))
        target = self.targets[target_id]
        target.state, target.broker_id = "ONLINE", broker_id

    async def agents_seen(self, target_ids: Collection[str], when: float) -> set[str]:
        """Record one batch of keepalives; the ids of unknown targets."""
        self.seen_batches.append((frozenset(target_ids), when))
        for target_id in target_ids:
            if target_id in self.targets:
                self.targets[target_id].last_seen = when
        return set(target_ids) - self.targets.keys()

    async def agent_disconnected(self, target_id: str, broker_id: str, reason: str) -> None:
        """The target goes OFFLINE if it is still routed to `broker_id`."""
        self.disconnections.append((target_id, broker_id, reason))
        target = self.targets.get(target_id)
        if target is not None and target.state == "ONLINE" and target.broker_id == broker_id:
            target.state = "OFFLINE"

    async def agent_refused(self, target_id: str, message: str, address: str) -> None:
        """Record a refusal."""
        self.refusals.append((target_id, message, address))
