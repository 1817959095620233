"""The broker's side of a lock (`broker.UserLocks`), on the real auth role and audit log.

The revocation sender is a recording fake here (its own tests are the broker's; the whole path to
a real agent is tests/e2e/test_lock_user.py). What is checked: the lock comes before the
revocation, which names the user's subject; a failed revocation leaves the lock in place and
audited; and a grant signed for a user locked after their call was authenticated never leaves
OpenConnection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import grpc.aio
import pytest
import pytest_asyncio

from audit import MIGRATIONS as AUDIT_MIGRATIONS
from audit import AuditLog, AuditStore, EventQuery
from auth import LOCKED_MESSAGE, MIGRATIONS, Caller
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from broker import BrokerServicer, ChannelRelay, ConnectedAgents, UserLocks
from broker.testing import StaticGrantIssuer
from mrzap import keys
from mrzap.errors import PermissionDenied, Unavailable
from mrzap.grant import GrantSigner
from mrzap.storage import Database
from mrzap.testing import TestIdentityProvider

from .test_auth_service import Org


class FakeRevocations:
    """Records each revocation; `failure` makes the next ones fail."""

    def __init__(self, org: Org) -> None:
        self._org = org
        self.revoked: list[tuple[list[mrzap_pb2.Subject], str, bool]] = []
        """(subjects, reason, whether the user was already locked when it was sent)."""
        self.failure: Exception | None = None

    async def revoke(
        self,
        *,
        grant_ids: Sequence[str] = (),
        subjects: Sequence[mrzap_pb2.Subject] = (),
        reason: str,
    ) -> str:
        assert not grant_ids
        if self.failure is not None:
            raise self.failure
        users, _ = await self._org.auth.list_users(100, "")
        (user,) = [u for u, _ in users if u.subject == subjects[0].sub]
        self.revoked.append((list(subjects), reason, user.locked))
        return f"rev-{len(self.revoked)}"


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    database.migrate([MIGRATIONS, AUDIT_MIGRATIONS])
    yield database
    await database.close()


@pytest.fixture
def org(idp: TestIdentityProvider, db: Database) -> Org:
    return Org(idp, db)


@pytest.fixture
def audit(db: Database) -> AuditLog:
    return AuditLog(AuditStore(db))


@pytest.mark.asyncio
async def test_the_lock_comes_first_and_the_revocation_names_the_users_subject(
    org: Org, audit: AuditLog
) -> None:
    alice, _, _ = await org.enrolled()
    admin, _, _ = await org.enrolled(sub="admin-sub")
    revocations = FakeRevocations(org)

    async def live(user_id: str) -> list[str]:
        return ["c-1", "c-2"] if user_id == alice.user.id else []

    locks = UserLocks(org.auth, revocations, audit, live)
    outcome = await locks.lock(Caller.of_session(admin), "alice@example.com", "gone", "ipv4:1")
    assert (outcome.revocation_id, outcome.connection_ids) == ("rev-1", ("c-1", "c-2"))
    ((subjects, reason, locked_when_sent),) = revocations.revoked
    assert [(s.iss, s.sub) for s in subjects] == [(alice.user.issuer, "alice-sub")]
    assert locked_when_sent
    assert reason == "user alice@example.com locked by admin@example.com: gone"
    (event,) = (await audit.list_events(EventQuery(text="locked")))[0]
    assert event.actor.user_id == admin.user.id
    assert event.actor.address == "ipv4:1"
    assert event.reasons[0].message == (
        "user alice@example.com locked: gone; revocation rev-1 sent to the agents"
    )


@pytest.mark.asyncio
async def test_a_failed_revocation_leaves_the_lock_audited_and_says_so(
    org: Org, audit: AuditLog
) -> None:
    _, alice_token, _ = await org.enrolled()
    admin, _, _ = await org.enrolled(sub="admin-sub")
    revocations = FakeRevocations(org)
    revocations.failure = Unavailable("the policy role is unreachable")
    locks = UserLocks(org.auth, revocations, audit)
    with pytest.raises(Unavailable):
        await locks.lock(Caller.of_session(admin), "alice@example.com", "", "")
    with pytest.raises(PermissionDenied, match=LOCKED_MESSAGE):
        await org.auth.authenticate(alice_token)
    (event,) = (await audit.list_events(EventQuery(text="revoking their grants failed")))[0]
    assert event.outcome == audit_pb.EVENT_OUTCOME_ALLOWED
    assert "the policy role is unreachable" in event.reasons[0].message


class _Context:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


@pytest.mark.asyncio
async def test_a_grant_for_a_user_locked_meanwhile_never_leaves_open_connection(
    org: Org, audit: AuditLog
) -> None:
    key = keys.generate_signing_key()
    alice_login = await org.login(key)
    enrolment = await org.auth.enroll_mfa(alice_login.info)
    alice = await org.auth.verify_mfa(alice_login.info, org.code(enrolment.secret))
    admin, _, _ = await org.enrolled(sub="admin-sub")
    agent_keys = {"t-1": keys.public_key_bytes(keys.generate_signing_key())}
    issuer = StaticGrantIssuer(GrantSigner(keys.generate_signing_key(), "svc-1"), agent_keys)
    locks = UserLocks(org.auth, FakeRevocations(org), audit)
    # The caller as the interceptor authenticated it, before the lock.
    stale = Caller.of_session(alice)
    request = pb.OpenConnectionRequest(target_id="t-1", verb=mrzap_pb2.VERB_EXEC, target_user="u")
    context = cast(grpc.aio.ServicerContext[Any, Any], _Context())

    def servicer(with_locks: bool) -> BrokerServicer:
        relay = ChannelRelay(ConnectedAgents())
        return BrokerServicer(
            issuer, relay, caller=lambda: stale, locks=locks if with_locks else None
        )

    assert (await servicer(True).OpenConnection(request, context)).grant.payload
    await locks.lock(Caller.of_session(admin), "alice@example.com", "", "")
    with pytest.raises(PermissionDenied, match=LOCKED_MESSAGE):
        await servicer(True).OpenConnection(request, context)
    # Without the check the grant would have gone out: what the check above stops.
    assert (await servicer(False).OpenConnection(request, context)).grant.payload
