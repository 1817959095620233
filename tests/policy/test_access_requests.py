"""Just-in-time access on SQLite and PostgreSQL: who may ask and decide, for how long, and how the
access ends by itself; every change and refusal audited, approvals bump the policy revision."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from audit import MIGRATIONS as AUDIT_MIGRATIONS
from audit import AuditLog, AuditStore, EventQuery
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from mrzap.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mrzap.storage import Database
from mrzap.testing import FixedClock
from policy import AccessRequests, AccessRequestState, AccessRequestStore
from policy._access_requests import PENDING_TIMEOUT_S
from policy._migrations import MIGRATIONS
from policy._model import (
    JustInTimeRules,
    Policy,
    Principal,
    SubjectSelector,
    TargetConnectRules,
    Verb,
)
from policy._store import PolicyStore

ALICE = Principal(user_id="u-alice", email="alice@example.com", groups=("developers",))
BOB = Principal(user_id="u-bob", email="bob@example.com", groups=("oncall-leads",))
CAROL = Principal(user_id="u-carol", email="carol@example.com", groups=("sales",))
HOUR = 3600.0


@dataclasses.dataclass
class World:
    requests: AccessRequests
    policies: PolicyStore
    audit: AuditLog
    clock: FixedClock
    jit: Policy
    reloads: list[None]

    async def events(self) -> list[audit_pb.AuditEvent]:
        events, _ = await self.audit.list_events(EventQuery())
        return events


@pytest_asyncio.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    db = Database(database_url)
    await asyncio.to_thread(db.migrate, [AUDIT_MIGRATIONS, MIGRATIONS])
    clock = FixedClock()
    policies = PolicyStore(db)
    audit = AuditLog(AuditStore(db), clock)
    prod = await policies.create(
        "prod shells",
        "",
        TargetConnectRules(target_users=("root",), verbs=(Verb.SHELL,)),
        clock.now(),
    )
    jit = await policies.create(
        "prod on call",
        "break-glass shells on production",
        JustInTimeRules(
            subjects=SubjectSelector(groups=("developers", "oncall-leads")),
            policy_ids=(prod.id,),
            approvers=SubjectSelector(groups=("oncall-leads",), user_emails=("alice@example.com",)),
            max_duration=2 * HOUR,
        ),
        clock.now(),
    )
    reloads: list[None] = []

    async def reload() -> None:
        reloads.append(None)

    requests = AccessRequests(AccessRequestStore(db), policies, audit, reload, clock)
    yield World(requests, policies, audit, clock, jit, reloads)
    await db.close()


@pytest.mark.asyncio
async def test_a_subject_asks_an_approver_approves_and_the_access_expires(world: World) -> None:
    revision = await world.policies.revision()
    asked = await world.requests.request(ALICE, world.jit.id, "incident 42", HOUR, "ipv4:x")
    assert asked.state is AccessRequestState.PENDING
    assert await world.requests.active_access() == []
    world.clock.advance(60)
    approved = await world.requests.approve(BOB, asked.id, "go ahead", "ipv4:y")
    assert approved.state is AccessRequestState.APPROVED
    assert approved.expires_at == world.clock.now() + HOUR
    assert approved.decider_email == "bob@example.com"
    assert await world.policies.revision() > revision
    assert world.reloads
    [active] = await world.requests.active_access()
    assert (active.user_id, active.jit_policy_id) == ("u-alice", world.jit.id)
    world.clock.advance(HOUR)
    assert await world.requests.active_access() == []
    [listed], _ = await world.requests.list(ALICE, ())
    assert listed.state is AccessRequestState.EXPIRED
    expired, _ = await world.requests.list(ALICE, {AccessRequestState.EXPIRED})
    assert [r.id for r in expired] == [asked.id]
    assert await world.requests.list(ALICE, {AccessRequestState.APPROVED}) == ([], "")
    messages = [e.reasons[0].message for e in await world.events()]
    assert any("approved" in m for m in messages)
    assert any("pending" in m for m in messages)


@pytest.mark.asyncio
async def test_automatic_approval(world: World) -> None:
    assert isinstance(world.jit.rules, JustInTimeRules)
    auto = await world.policies.update(
        world.jit.id,
        world.jit.name,
        "",
        dataclasses.replace(world.jit.rules, auto_approve=True),
        world.clock.now(),
    )
    asked = await world.requests.request(ALICE, auto.id, "deploy", HOUR, "")
    assert asked.state is AccessRequestState.APPROVED
    assert asked.decider_email == ""
    assert [a.request_id for a in await world.requests.active_access()] == [asked.id]


@pytest.mark.asyncio
async def test_only_subjects_may_ask_and_refusals_are_audited(world: World) -> None:
    with pytest.raises(PermissionDenied):
        await world.requests.request(CAROL, world.jit.id, "curious", HOUR, "")
    [event] = await world.events()
    assert event.outcome == audit_pb.EVENT_OUTCOME_DENIED
    assert event.actor.user_id == "u-carol"
    with pytest.raises(PermissionDenied, match="API keys"):
        await world.requests.request(Principal(api_key_id="mzk_1"), world.jit.id, "x", HOUR, "")


@pytest.mark.asyncio
async def test_bad_requests_are_refused_and_store_nothing(world: World) -> None:
    for policy_id, reason, duration, error in (
        (world.jit.id, "ok", 2 * HOUR + 1, InvalidArgument),
        (world.jit.id, "ok", 0, InvalidArgument),
        (world.jit.id, "   ", HOUR, InvalidArgument),
        (world.jit.id, "x" * 1001, HOUR, InvalidArgument),
        ("", "ok", HOUR, InvalidArgument),
        ("00000000-0000-0000-0000-000000000000", "ok", HOUR, NotFound),
    ):
        with pytest.raises(error):
            await world.requests.request(ALICE, policy_id, reason, duration, "")
    not_jit = (await world.policies.list(None, 10))[-1]
    assert not_jit.name == "prod shells"
    with pytest.raises(InvalidArgument, match="not a just-in-time policy"):
        await world.requests.request(ALICE, not_jit.id, "ok", HOUR, "")
    assert await world.requests.list(ALICE, ()) == ([], "")


@pytest.mark.asyncio
async def test_nobody_decides_their_own_request_and_only_approvers_decide(world: World) -> None:
    # Alice is an approver by email, but not of her own request.
    asked = await world.requests.request(ALICE, world.jit.id, "incident", HOUR, "")
    with pytest.raises(PermissionDenied, match="your own"):
        await world.requests.approve(ALICE, asked.id, "", "")
    with pytest.raises(PermissionDenied, match="only the approvers"):
        await world.requests.approve(CAROL, asked.id, "", "")
    with pytest.raises(PermissionDenied):
        await world.requests.deny(CAROL, asked.id, "", "")
    denied_events = [e for e in await world.events() if e.outcome == audit_pb.EVENT_OUTCOME_DENIED]
    assert len(denied_events) == 3
    [still], _ = await world.requests.list(ALICE, ())
    assert still.state is AccessRequestState.PENDING
    # Bob asks; Alice may decide his.
    his = await world.requests.request(BOB, world.jit.id, "db migration", HOUR, "")
    denied = await world.requests.deny(ALICE, his.id, "not now", "")
    assert denied.state is AccessRequestState.DENIED
    assert denied.decision_comment == "not now"
    with pytest.raises(FailedPrecondition, match="DENIED"):
        await world.requests.approve(ALICE, his.id, "", "")
    assert await world.requests.active_access() == []
    with pytest.raises(NotFound):
        await world.requests.approve(BOB, "no-such-request", "", "")


@pytest.mark.asyncio
async def test_an_undecided_request_expires(world: World) -> None:
    asked = await world.requests.request(ALICE, world.jit.id, "incident", HOUR, "")
    world.clock.advance(PENDING_TIMEOUT_S)
    with pytest.raises(FailedPrecondition, match="EXPIRED"):
        await world.requests.approve(BOB, asked.id, "", "")
    assert await world.requests.active_access() == []


@pytest.mark.asyncio
async def test_listing_shows_own_requests_and_those_the_caller_may_decide(world: World) -> None:
    ids = []
    for _ in range(3):
        ids.append((await world.requests.request(ALICE, world.jit.id, "x", HOUR, "")).id)
        world.clock.advance(1)
    mine, _ = await world.requests.list(ALICE, ())
    assert [r.id for r in mine] == ids[::-1]
    decidable, _ = await world.requests.list(BOB, ())
    assert len(decidable) == 3
    assert await world.requests.list(CAROL, ()) == ([], "")
    first, token = await world.requests.list(BOB, (), page_size=2)
    rest, last = await world.requests.list(BOB, (), page_size=2, page_token=token)
    assert [r.id for r in first + rest] == ids[::-1]
    assert last == ""
    with pytest.raises(InvalidArgument):
        await world.requests.list(BOB, (), page_token="garbage!")
