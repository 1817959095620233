"""A registry with its audit log on a fresh database (SQLite, PostgreSQL) and a movable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from audit import MIGRATIONS as AUDIT_MIGRATIONS
from audit import AuditLog, AuditStore, EventQuery
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from mrzap import keys
from mrzap.storage import Database
from mrzap.testing import FixedClock
from registry import (
    MIGRATIONS,
    AgentRegistration,
    Registered,
    Registry,
    RegistryConfig,
    RegistryStore,
)

START = 1_900_000_000.0


class Org:
    """The registry of one organisation, its audit log and its clock."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.clock = FixedClock(START)
        self.audit = AuditLog(AuditStore(db), self.clock)
        self.config = RegistryConfig(
            activation_token_lifetime_s=600,
            offline_timeout_s=60,
            offline_cleanup_timeout_s=86400,
        )
        self.registry = Registry(RegistryStore(db), self.audit, self.config, self.clock)

    async def registration_key(self, environment_id: str = "") -> str:
        """The secret of a new registration key."""
        return (await self.registry.create_registration_key("ci", environment_id)).secret

    async def register(self, name: str = "web-1", environment_id: str = "") -> Registered:
        """A target registered the way an agent does it: registration key, token, key."""
        issued = await self.registry.create_activation_token(
            registration_key=await self.registration_key(environment_id), target_name=name
        )
        public_key = keys.public_key_bytes(keys.generate_signing_key())
        return await self.registry.register_agent(
            issued.token,
            AgentRegistration(public_key, hostname=f"{name}.internal", agent_version="0.1.0"),
        )

    async def events(self, target_id: str = "") -> list[audit_pb.AuditEvent]:
        """Audit events of kind TARGET (about one target, when given), newest first."""
        kinds = frozenset({audit_pb.EVENT_KIND_TARGET})
        events, _ = await self.audit.list_events(EventQuery(kinds=kinds, target_id=target_id), 500)
        return events

    async def denials(self) -> list[str]:
        """The messages of refusals, newest first."""
        return [
            event.target.message
            for event in await self.events()
            if event.outcome == audit_pb.EVENT_OUTCOME_DENIED
        ]


@pytest_asyncio.fixture
async def org(database_url: str) -> AsyncIterator[Org]:
    db = Database(database_url)
    db.migrate([AUDIT_MIGRATIONS, MIGRATIONS])
    yield Org(db)
    await db.close()
