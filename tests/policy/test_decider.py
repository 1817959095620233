"""The decider over a real store: changes reach every process, typed rules are validated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mrzap.errors import InvalidArgument
from mrzap.storage import Database
from mrzap.testing import FixedClock
from policy._decider import PolicyDecider
from policy._engine import engine_from_spec
from policy._migrations import MIGRATIONS
from policy._model import (
    ActiveAccess,
    Destination,
    JustInTimeRules,
    OrganizationControlsRules,
    PolicyRules,
    Principal,
    ProxyRules,
    SessionRecordingRules,
    SubjectSelector,
    TargetAccess,
    TargetConnectRules,
    TargetSelector,
    Verb,
)
from policy._store import PolicyStore

NOW = 1_800_000_000.0
ALICE = Principal("u-a", "https://idp", "s-a", "alice@example.com", ("ops",), False, "", NOW)
SHELL = TargetAccess("web-1", "prod", Verb.SHELL, "root")
OPS_SHELL = TargetConnectRules(
    SubjectSelector(groups=("ops",)),
    TargetSelector(environment_ids=("prod",)),
    ("root",),
    (Verb.SHELL,),
)


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[PolicyStore]:
    """A migrated, empty store."""
    db = Database(database_url)
    await asyncio.to_thread(db.migrate, [MIGRATIONS])
    yield PolicyStore(db)
    await db.close()


@pytest.mark.asyncio
async def test_changes_through_another_process_reach_every_decider(store: PolicyStore) -> None:
    """Two deciders on one database (two service processes): a change through one reaches both."""
    clock = FixedClock(NOW)
    here = PolicyDecider(store, engine_from_spec("embedded"), clock, refresh_interval=0)
    there = PolicyDecider(store, engine_from_spec("embedded"), clock, refresh_interval=0)
    await here.start()
    await there.start()
    try:
        assert not (await there.decide(ALICE, SHELL)).allowed
        policy = await store.create("ops-shell", "", OPS_SHELL, NOW)
        await here.reload()
        assert (await here.decide(ALICE, SHELL)).allowed
        assert (await there.decide(ALICE, SHELL)).allowed
        await store.delete(policy.id, NOW)
        assert not (await there.decide(ALICE, SHELL)).allowed
    finally:
        await here.close()
        await there.close()


@pytest.mark.asyncio
async def test_the_revision_is_read_at_most_once_per_interval(store: PolicyStore) -> None:
    """Between checks the loaded policies are used as they are; `reload` takes changes at once."""
    decider = PolicyDecider(
        store, engine_from_spec("embedded"), FixedClock(NOW), refresh_interval=3600
    )
    await decider.start()
    try:
        await store.create("ops-shell", "", OPS_SHELL, NOW)
        assert not (await decider.decide(ALICE, SHELL)).allowed
        await decider.reload()
        assert (await decider.decide(ALICE, SHELL)).allowed
    finally:
        await decider.close()


@pytest.mark.asyncio
async def test_just_in_time_access_follows_the_revision(store: PolicyStore) -> None:
    """Approved access is read on reload; an approval elsewhere bumps the revision for all."""
    clock = FixedClock(NOW)
    vault = await store.create(
        "vault",
        "",
        TargetConnectRules(SubjectSelector(), TargetSelector(("web-1",)), ("root",), (Verb.SHELL,)),
        NOW,
    )
    jit = await store.create(
        "jit",
        "",
        JustInTimeRules(
            SubjectSelector(groups=("ops",)), (vault.id,), SubjectSelector(), True, 600
        ),
        NOW,
    )
    approved: list[ActiveAccess] = []

    async def active() -> list[ActiveAccess]:
        return approved

    decider = PolicyDecider(store, engine_from_spec("embedded"), clock, active, refresh_interval=0)
    await decider.start()
    try:
        assert not (await decider.decide(ALICE, SHELL)).allowed
        approved.append(ActiveAccess("r-1", "u-a", "alice@example.com", jit.id, NOW + 600))
        await store.bump_revision()
        assert (await decider.decide(ALICE, SHELL)).allowed
        clock.advance(601)
        ended = await decider.decide(ALICE, SHELL)
        assert not ended.allowed
    finally:
        await decider.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("rules", "says"),
    [
        (
            TargetConnectRules(verbs=(Verb.TUNNEL,)),
            "allows SHELL, EXEC and FILE_TRANSFER",
        ),
        (ProxyRules(destinations=(Destination("db", 0),)), "port from 1 to 65535"),
        (ProxyRules(destinations=(Destination("", 22),)), "needs a host"),
        (JustInTimeRules(policy_ids=("no-such-policy",)), "can only give the access"),
        (OrganizationControlsRules(True, -1, 0), "cannot be negative"),
    ],
)
async def test_typed_rules_are_validated(store: PolicyStore, rules: PolicyRules, says: str) -> None:
    """Typed rules that cannot mean anything sensible are refused before they are stored."""
    decider = PolicyDecider(store, engine_from_spec("embedded"), FixedClock(NOW))
    await decider.start()
    try:
        with pytest.raises(InvalidArgument, match=says):
            await decider.check(rules)
        recording = SessionRecordingRules(SubjectSelector(groups=("ops",)))
        assert await decider.check(recording) == []
    finally:
        await decider.close()


@pytest.mark.asyncio
async def test_just_in_time_may_give_stored_access_policies(store: PolicyStore) -> None:
    """A just-in-time policy may name stored target connect, Kubernetes and proxy policies."""
    shell = await store.create("shell", "", OPS_SHELL, NOW)
    decider = PolicyDecider(store, engine_from_spec("embedded"), FixedClock(NOW))
    await decider.start()
    try:
        assert await decider.check(JustInTimeRules(policy_ids=(shell.id,))) == []
    finally:
        await decider.close()
