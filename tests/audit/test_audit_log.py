"""The audit log on SQLite and PostgreSQL: recording, transactions, filters and paging."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from audit import MIGRATIONS, Actor, AuditLog, AuditStore, EventQuery, Outcome
from bastion.audit.v1 import audit_service_pb2 as pb
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.errors import InvalidArgument
from mrzap.paging import encode_page_token
from mrzap.storage import Database
from mrzap.testing import FixedClock
from mrzap.timestamps import from_timestamp, to_timestamp

START = 1_900_000_000.0


@pytest_asyncio.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    db.migrate([MIGRATIONS])
    yield db
    await db.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
def log(database: Database, clock: FixedClock) -> AuditLog:
    return AuditLog(AuditStore(database), clock)


def command_event(text: str, *, user_id: str = "u-1", connection_id: str = "c-1") -> pb.AuditEvent:
    return pb.AuditEvent(
        kind=pb.EVENT_KIND_COMMAND,
        outcome=pb.EVENT_OUTCOME_ALLOWED,
        actor=pb.Actor(user_id=user_id),
        command=pb.CommandDetails(
            connection_id=connection_id, target_id="t-1", target_user="root", command=text
        ),
    )


async def all_events(log: AuditLog, query: EventQuery | None = None) -> list[pb.AuditEvent]:
    events, next_token = await log.list_events(query or EventQuery(), 500)
    assert next_token == ""
    return events


@pytest.mark.asyncio
async def test_record_fills_id_and_time_and_keeps_the_event_whole(log: AuditLog) -> None:
    stored = await log.record(command_event("ls -la"))
    assert stored.id
    assert from_timestamp(stored.time) == START
    given = command_event("whoami")
    given.time.CopyFrom(to_timestamp(START - 30))
    older = await log.record(given)
    assert from_timestamp(older.time) == START - 30
    assert older.id != stored.id
    assert await all_events(log) == [stored, older]


@pytest.mark.asyncio
async def test_record_target_writes_a_target_event(log: AuditLog) -> None:
    event = await log.record_target(
        "t-9",
        registry_pb.TARGET_STATE_ONLINE,
        "connected to broker b-1",
        outcome=Outcome.ALLOWED,
        actor=Actor(user_id="u-2", api_key_id="mzk_1", address="ipv4:127.0.0.1:5000"),
    )
    assert event.kind == pb.EVENT_KIND_TARGET
    assert event.outcome == pb.EVENT_OUTCOME_ALLOWED
    assert event.actor == pb.Actor(
        user_id="u-2", api_key_id="mzk_1", target_id="t-9", address="ipv4:127.0.0.1:5000"
    )
    assert event.target == pb.TargetDetails(
        target_id="t-9", state=registry_pb.TARGET_STATE_ONLINE, message="connected to broker b-1"
    )
    assert await all_events(log, EventQuery(target_id="t-9")) == [event]


@pytest.mark.asyncio
async def test_an_event_recorded_in_a_transaction_rolls_back_with_it(
    log: AuditLog, database: Database
) -> None:
    class Abandoned(Exception):
        pass

    async def abandon() -> None:
        async with database.session() as s, s.begin():
            await log.record(command_event("rm -rf /tmp/x"), session=s)
            raise Abandoned

    with pytest.raises(Abandoned):
        await abandon()
    assert await all_events(log) == []
    async with database.session() as s, s.begin():
        kept = await log.record(command_event("uptime"), session=s)
    assert await all_events(log) == [kept]


@pytest.mark.asyncio
async def test_filters_combine(log: AuditLog, clock: FixedClock) -> None:
    first = await log.record(command_event("Deploy Release", user_id="u-1", connection_id="c-1"))
    clock.advance(10)
    second = await log.record(command_event("cat /etc/hosts", user_id="u-2", connection_id="c-2"))
    clock.advance(10)
    denied = await log.record_target("t-2", 0, "unknown key", outcome=Outcome.DENIED)
    assert await all_events(log) == [denied, second, first]
    assert await all_events(log, EventQuery(kinds=frozenset({pb.EVENT_KIND_TARGET}))) == [denied]
    assert await all_events(log, EventQuery(outcomes=frozenset({pb.EVENT_OUTCOME_DENIED}))) == [
        denied
    ]
    assert await all_events(log, EventQuery(user_id="u-2")) == [second]
    assert await all_events(log, EventQuery(connection_id="c-1")) == [first]
    assert await all_events(log, EventQuery(target_id="t-1")) == [second, first]
    assert await all_events(log, EventQuery(start=START + 10)) == [denied, second]
    assert await all_events(log, EventQuery(end=START + 10)) == [first]
    assert await all_events(log, EventQuery(start=START, end=START + 20)) == [second, first]
    assert await all_events(log, EventQuery(text="deploy release")) == [first]
    assert await all_events(log, EventQuery(text="UNKNOWN KEY")) == [denied]
    assert await all_events(log, EventQuery(text="e", user_id="u-1")) == [first]


@pytest.mark.asyncio
async def test_text_search_takes_wildcards_literally(log: AuditLog) -> None:
    await log.record(command_event("echo hello"))
    percent = await log.record(command_event("df -h 100%"))
    assert await all_events(log, EventQuery(text="%")) == [percent]
    assert await all_events(log, EventQuery(text="_")) == []


@pytest.mark.asyncio
async def test_paging_walks_every_event_once_newest_first(log: AuditLog, clock: FixedClock) -> None:
    recorded = []
    for n in range(7):
        # Pairs of events share a time, so the insertion order must break ties.
        if n % 2 == 0:
            clock.advance(1)
        recorded.append(await log.record(command_event(f"command {n}")))
    # Newest first; of two events with the same time, the one recorded later.
    expected = list(reversed(recorded))
    seen: list[pb.AuditEvent] = []
    token = ""
    while True:
        page, token = await log.list_events(EventQuery(), 3, token)
        assert len(page) <= 3
        seen += page
        if not token:
            break
    assert seen == expected


@pytest.mark.asyncio
async def test_bad_requests_are_refused(log: AuditLog) -> None:
    with pytest.raises(InvalidArgument, match="page token"):
        await log.list_events(EventQuery(), 10, "not-a-token")
    with pytest.raises(InvalidArgument, match="page token"):
        await log.list_events(EventQuery(), 10, encode_page_token(("yesterday", "1")))
    with pytest.raises(InvalidArgument, match="page_size"):
        await log.list_events(EventQuery(), -1)
    with pytest.raises(InvalidArgument, match="time range"):
        await log.list_events(EventQuery(start=START, end=START))


@pytest.mark.asyncio
async def test_an_overlong_target_id_is_kept_in_the_event_only(log: AuditLog) -> None:
    named = "x" * 300
    event = await log.record_target(named, 0, "malformed target id", outcome=Outcome.DENIED)
    assert (await all_events(log))[0].target.target_id == named
    assert await all_events(log, EventQuery(target_id=named)) == []
    assert event.id
