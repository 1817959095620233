"""Connection records and revocations in the store, on SQLite and PostgreSQL.

`Connections` is driven the way BrokerServicer drives it (opened, answered, ended); the relay is
a real `ChannelRelay` with no agents, since only its channel objects are needed here.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio

from audit import MIGRATIONS as AUDIT_MIGRATIONS
from audit import AuditLog, AuditStore, EventQuery
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.mrzap.v1 import mrzap_pb2
from broker import MIGRATIONS, ConnectedAgents, Connections, ConnectionState, ConnectionStore
from broker._connection_store import ConnectionQuery
from broker._connections import ChannelContext, ChannelOutcome
from broker._relay import ChannelRelay
from broker._revocations import Revocations
from broker.testing import StaticGrantIssuer
from mrzap import keys
from mrzap.errors import InvalidArgument, NotFound
from mrzap.grant import GrantSigner
from mrzap.storage import Database
from mrzap.testing import FixedClock
from mrzap.timestamps import to_timestamp

START = 1_900_000_000.0
SESSION_S = 3600.0


@dataclasses.dataclass
class Book:
    db: Database
    clock: FixedClock
    audit: AuditLog
    store: ConnectionStore
    connections: Connections

    def context(
        self,
        *,
        user: str = "alice",
        connection_id: str = "",
        verb: mrzap_pb2.Verb.ValueType = mrzap_pb2.VERB_SHELL,
    ) -> ChannelContext:
        channel_id = str(uuid.uuid4())
        return ChannelContext(
            channel_id=channel_id,
            connection_id=connection_id or channel_id,
            user_id=f"user-{user}",
            subject_iss="https://idp.test",
            subject_sub=f"{user}-sub",
            target_id="target-1",
            verb=verb,
            target_user=user,
            grant_id=str(uuid.uuid4()),
        )

    def grant(self, context: ChannelContext) -> mrzap_pb2.Grant:
        return mrzap_pb2.Grant(
            grant_id=context.grant_id,
            subject=mrzap_pb2.Subject(
                iss=context.subject_iss, sub=context.subject_sub, email="a@example.com"
            ),
            session_expires_at=to_timestamp(self.clock.now() + SESSION_S),
            record=mrzap_pb2.RecordSettings(output=True),
        )

    async def open(self, context: ChannelContext) -> None:
        reattaching = None
        if context.reattach:
            reattaching = await self.connections.check_reattach(
                context.connection_id, context.user_id, context.target_id, context.target_user
            )
        await self.connections.opened(context, self.grant(context), "a@example.com", reattaching)

    async def state(self, connection_id: str) -> ConnectionState:
        record = await self.connections.get(connection_id)
        assert record is not None
        return record.state

    async def events(self, connection_id: str) -> list[int]:
        """Connection event types of the connection, oldest first."""
        query = EventQuery(
            kinds=frozenset({audit_pb.EVENT_KIND_CONNECTION}), connection_id=connection_id
        )
        events, _ = await self.audit.list_events(query, 100)
        return [event.connection.type for event in reversed(events)]


@pytest_asyncio.fixture
async def book(database_url: str) -> AsyncIterator[Book]:
    db = Database(database_url)
    db.migrate([AUDIT_MIGRATIONS, MIGRATIONS])
    clock = FixedClock(START)
    audit = AuditLog(AuditStore(db), clock)
    store = ConnectionStore(db)
    connections = Connections(store, audit, "broker-1", ChannelRelay(ConnectedAgents()), clock)
    yield Book(db, clock, audit, store, connections)
    await connections.stop()
    await db.close()


@pytest.mark.asyncio
async def test_a_shell_goes_pending_open_detached_open_closed(book: Book) -> None:
    first = book.context()
    await book.open(first)
    assert await book.state(first.connection_id) is ConnectionState.PENDING
    book.connections.answered(first, None)
    await book.connections.flush()
    assert await book.state(first.connection_id) is ConnectionState.OPEN
    book.connections.ended(first, ChannelOutcome.LEFT)
    await book.connections.flush()
    assert await book.state(first.connection_id) is ConnectionState.DETACHED

    again = book.context(connection_id=first.connection_id)
    await book.open(again)
    book.connections.answered(again, None)
    await book.connections.flush()
    record = await book.connections.get(first.connection_id)
    assert record is not None
    assert record.state is ConnectionState.OPEN
    assert record.grant_ids == (first.grant_id, again.grant_id)
    assert record.recorded
    book.connections.ended(again, ChannelOutcome.AGENT_CLOSED)
    await book.connections.flush()
    record = await book.connections.get(first.connection_id)
    assert record is not None
    assert record.state is ConnectionState.CLOSED
    assert record.closed_at == START
    assert await book.events(first.connection_id) == [
        audit_pb.CONNECTION_EVENT_TYPE_OPENED,
        audit_pb.CONNECTION_EVENT_TYPE_DETACHED,
        audit_pb.CONNECTION_EVENT_TYPE_ATTACHED,
        audit_pb.CONNECTION_EVENT_TYPE_CLOSED,
    ]


@pytest.mark.asyncio
async def test_a_command_is_closed_when_its_client_leaves(book: Book) -> None:
    context = book.context(verb=mrzap_pb2.VERB_EXEC)
    await book.open(context)
    book.connections.answered(context, None)
    book.connections.ended(context, ChannelOutcome.LEFT)
    await book.connections.flush()
    assert await book.state(context.connection_id) is ConnectionState.CLOSED


@pytest.mark.asyncio
async def test_only_the_channel_last_attached_detaches_a_shell(book: Book) -> None:
    first = book.context()
    await book.open(first)
    book.connections.answered(first, None)
    second = book.context(connection_id=first.connection_id)
    await book.open(second)
    book.connections.answered(second, None)
    # The first client's channel ends after the second attached: the shell is still attached.
    book.connections.ended(first, ChannelOutcome.LEFT)
    await book.connections.flush()
    assert await book.state(first.connection_id) is ConnectionState.OPEN


@pytest.mark.asyncio
async def test_a_rejected_syn_closes_a_new_connection_but_not_a_running_shell(book: Book) -> None:
    reject = mrzap_pb2.Signed(
        payload=mrzap_pb2.Reject(code=mrzap_pb2.REASON_CODE_GRANT_REVOKED).SerializeToString()
    ).SerializeToString()
    new = book.context()
    await book.open(new)
    book.connections.answered(new, reject)
    book.connections.ended(new, ChannelOutcome.REJECTED)
    await book.connections.flush()
    assert await book.state(new.connection_id) is ConnectionState.CLOSED

    shell = book.context()
    await book.open(shell)
    book.connections.answered(shell, None)
    book.connections.ended(shell, ChannelOutcome.LEFT)
    await book.connections.flush()
    again = book.context(connection_id=shell.connection_id)
    await book.open(again)
    book.connections.answered(again, reject)
    book.connections.ended(again, ChannelOutcome.REJECTED)
    await book.connections.flush()
    assert await book.state(shell.connection_id) is ConnectionState.DETACHED
    query = EventQuery(
        kinds=frozenset({audit_pb.EVENT_KIND_CONNECTION}), connection_id=new.connection_id
    )
    events, _ = await book.audit.list_events(query, 10)
    rejected = [e for e in events if e.connection.type == audit_pb.CONNECTION_EVENT_TYPE_REJECTED]
    assert rejected[0].connection.reject_code == mrzap_pb2.REASON_CODE_GRANT_REVOKED
    assert rejected[0].outcome == audit_pb.EVENT_OUTCOME_DENIED


@pytest.mark.asyncio
async def test_reattach_needs_a_live_shell_of_the_same_user(book: Book) -> None:
    alices = book.context()
    await book.open(alices)
    book.connections.answered(alices, None)
    await book.connections.flush()
    # Another user naming alice's connection gets the same answer as for an unknown id.
    with pytest.raises(NotFound):
        await book.connections.check_reattach(
            alices.connection_id, "user-mallory", "target-1", "alice"
        )
    with pytest.raises(NotFound):
        await book.connections.check_reattach("no-such-id", "user-alice", "target-1", "alice")
    with pytest.raises(NotFound):
        await book.connections.check_reattach(
            alices.connection_id, "user-alice", "target-2", "alice"
        )
    with pytest.raises(NotFound):
        await book.connections.check_reattach(
            alices.connection_id, "user-alice", "target-1", "root"
        )
    await book.connections.check_reattach(alices.connection_id, "user-alice", "target-1", "alice")
    await book.connections.close_revoked([alices.grant_id], [], "closed by its user")
    with pytest.raises(NotFound):
        await book.connections.check_reattach(
            alices.connection_id, "user-alice", "target-1", "alice"
        )


@pytest.mark.asyncio
async def test_revoking_closes_records_by_grant_or_by_user_and_audits_why(book: Book) -> None:
    alice_1, alice_2, bob = book.context(), book.context(), book.context(user="bob")
    for context in (alice_1, alice_2, bob):
        await book.open(context)
    assert await book.connections.close_revoked([alice_1.grant_id], [], "closed", "user-admin") == [
        alice_1.connection_id
    ]
    closed = await book.connections.close_revoked([], [("https://idp.test", "alice-sub")], "locked")
    assert closed == [alice_2.connection_id]
    assert await book.state(bob.connection_id) is ConnectionState.PENDING
    query = EventQuery(
        kinds=frozenset({audit_pb.EVENT_KIND_CONNECTION}), connection_id=alice_1.connection_id
    )
    events, _ = await book.audit.list_events(query, 10)
    assert events[0].actor.user_id == "user-admin"
    assert [reason.message for reason in events[0].reasons] == ["closed"]
    assert await book.connections.live_ids_of("user-alice") == []
    assert await book.connections.live_ids_of("user-bob") == [bob.connection_id]


@pytest.mark.asyncio
async def test_expired_and_abandoned_connections_are_closed(book: Book) -> None:
    running, abandoned = book.context(), book.context()
    await book.open(running)
    await book.open(abandoned)  # its channel never comes
    book.connections.answered(running, None)
    await book.connections.flush()
    book.clock.advance(301)
    assert await book.connections.close_expired() == [abandoned.connection_id]
    assert await book.state(abandoned.connection_id) is ConnectionState.CLOSED
    assert await book.state(running.connection_id) is ConnectionState.OPEN
    book.clock.advance(SESSION_S)
    page, _ = await book.connections.page(ConnectionQuery(user_id="user-alice"))
    assert [r.state for r in page] == [ConnectionState.CLOSED, ConnectionState.CLOSED]
    record = await book.connections.get(running.connection_id)
    assert record is not None
    assert record.state is ConnectionState.CLOSED
    assert record.close_reason == "the session expired"


async def connections_in_every_live_state(
    book: Book,
) -> tuple[ChannelContext, ChannelContext, ChannelContext, ChannelContext]:
    """Connections to target-1 that are OPEN, DETACHED and PENDING, and an OPEN one to
    target-2; in that order."""
    open_, detached, pending = book.context(), book.context(), book.context()
    other_target = dataclasses.replace(book.context(), target_id="target-2")
    for context in (open_, detached, pending, other_target):
        await book.open(context)
    for context in (open_, detached, other_target):
        book.connections.answered(context, None)
    book.connections.ended(detached, ChannelOutcome.LEFT)
    return open_, detached, pending, other_target


@pytest.mark.asyncio
async def test_a_terminated_target_has_all_its_connections_closed(book: Book) -> None:
    open_, detached, pending, other_target = await connections_in_every_live_state(book)

    closed = await book.connections.close_terminated("target-1")

    ours = [open_.connection_id, detached.connection_id, pending.connection_id]
    assert sorted(closed) == sorted(ours)
    for connection_id in ours:
        record = await book.connections.get(connection_id)
        assert record is not None
        assert record.state is ConnectionState.CLOSED
        assert "the target was terminated" in record.close_reason
    assert await book.events(detached.connection_id) == [
        audit_pb.CONNECTION_EVENT_TYPE_OPENED,
        audit_pb.CONNECTION_EVENT_TYPE_DETACHED,
        audit_pb.CONNECTION_EVENT_TYPE_CLOSED,
    ]
    assert await book.state(other_target.connection_id) is ConnectionState.OPEN
    assert await book.connections.close_terminated("target-1") == []


@pytest.mark.asyncio
async def test_an_agent_restart_closes_what_ran_under_the_old_process_only(book: Book) -> None:
    open_, detached, pending, other_target = await connections_in_every_live_state(book)
    book.clock.advance(1)
    restarted_at = book.clock.now()
    after = book.context()  # opened on the new process
    await book.open(after)
    book.connections.answered(after, None)

    closed = await book.connections.close_ended_by_restart("target-1", restarted_at)

    assert sorted(closed) == sorted([open_.connection_id, detached.connection_id])
    record = await book.connections.get(detached.connection_id)
    assert record is not None
    assert record.state is ConnectionState.CLOSED
    assert record.close_reason == "the agent restarted: what ran on the target has ended"
    assert await book.events(detached.connection_id) == [
        audit_pb.CONNECTION_EVENT_TYPE_OPENED,
        audit_pb.CONNECTION_EVENT_TYPE_DETACHED,
        audit_pb.CONNECTION_EVENT_TYPE_CLOSED,
    ]
    # Its SYN may yet reach the new process; another target's agent did not restart; and a
    # connection started on the new process runs there.
    assert await book.state(pending.connection_id) is ConnectionState.PENDING
    assert await book.state(other_target.connection_id) is ConnectionState.OPEN
    assert await book.state(after.connection_id) is ConnectionState.OPEN


@pytest.mark.asyncio
async def test_a_detached_shell_that_ended_is_closed_by_its_own_agent_only(book: Book) -> None:
    detached, attached = book.context(), book.context()
    for context in (detached, attached):
        await book.open(context)
        book.connections.answered(context, None)
    book.connections.ended(detached, ChannelOutcome.LEFT)
    await book.connections.flush()
    # Another target's agent cannot close it, and an attached shell is the client's to end.
    assert not await book.connections.close_ended_detached("target-2", detached.connection_id)
    assert not await book.connections.close_ended_detached("target-1", attached.connection_id)
    assert not await book.connections.close_ended_detached("target-1", "no-such-connection")
    assert await book.state(detached.connection_id) is ConnectionState.DETACHED
    assert await book.connections.close_ended_detached("target-1", detached.connection_id)
    record = await book.connections.get(detached.connection_id)
    assert record is not None
    assert record.state is ConnectionState.CLOSED
    assert record.close_reason == "the shell ended while detached"
    assert await book.state(attached.connection_id) is ConnectionState.OPEN


@pytest.mark.asyncio
async def test_lists_are_newest_first_filtered_and_paged(book: Book) -> None:
    ids = []
    for n in range(5):
        context = book.context(user="bob" if n == 2 else "alice")
        await book.open(context)
        ids.append(context.connection_id)
        book.clock.advance(1)
    query = ConnectionQuery(user_id="user-alice")
    first, token = await book.connections.page(query, 2)
    second, token_2 = await book.connections.page(query, 2, token)
    assert [r.id for r in first + second] == [ids[4], ids[3], ids[1], ids[0]]
    assert token_2 == ""
    everyone, _ = await book.connections.page(ConnectionQuery(), 10)
    assert len(everyone) == 5
    open_only, _ = await book.connections.page(ConnectionQuery(states=[ConnectionState.OPEN]), 10)
    assert open_only == []
    with pytest.raises(InvalidArgument):
        await book.connections.page(query, 2, "not-a-token")


class Pushed:
    """A stand-in for an agent's control stream that keeps what the broker sends it."""

    def __init__(self, target_id: str) -> None:
        self.target_id = target_id
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, message: object) -> None:
        self.sent.append(message.revocation)  # type: ignore[attr-defined]


def issuer() -> StaticGrantIssuer:
    return StaticGrantIssuer(GrantSigner(keys.generate_signing_key(), "svc-1"), {})


@pytest.mark.asyncio
async def test_revocations_are_pushed_kept_in_force_and_shared_between_brokers(
    book: Book,
) -> None:
    agents = ConnectedAgents()
    online = Pushed("target-1")
    agents.add(online)  # type: ignore[arg-type]
    heard: list[tuple[Sequence[str], Sequence[tuple[str, str]], str]] = []
    revocations = Revocations(issuer(), agents, book.store, book.clock)
    revocations.listen(lambda grants, subjects, reason: heard.append((grants, subjects, reason)))
    await revocations.refresh()
    with pytest.raises(InvalidArgument):
        await revocations.revoke(reason="nothing named")
    revocation_id = await revocations.revoke(
        grant_ids=["g-1"], reason="closed", expires_at=START + 60
    )
    subject = mrzap_pb2.Subject(iss="https://idp.test", sub="alice-sub")
    await revocations.revoke(subjects=[subject], reason="locked")
    assert len(online.sent) == 2
    first = mrzap_pb2.Revocation.FromString(mrzap_pb2.Signed.FromString(online.sent[0]).payload)
    assert first.revocation_id == revocation_id
    assert first.grant_ids == ["g-1"]
    assert heard == [(["g-1"], [], "closed"), ([], [("https://idp.test", "alice-sub")], "locked")]

    # An agent that (re)connects hears both; once the grant's session is over, only the user's.
    later = Pushed("target-2")
    revocations.welcome(later)  # type: ignore[arg-type]
    assert later.sent == online.sent
    book.clock.advance(61)
    await revocations.refresh()
    latest = Pushed("target-3")
    revocations.welcome(latest)  # type: ignore[arg-type]
    assert latest.sent == online.sent[1:]

    # Another broker on the same store learns of them and tells its own agents.
    other_agents = ConnectedAgents()
    elsewhere = Pushed("target-4")
    other_agents.add(elsewhere)  # type: ignore[arg-type]
    other = Revocations(issuer(), other_agents, book.store, book.clock)
    await other.refresh()
    assert elsewhere.sent == online.sent[1:]
    await other.refresh()
    assert elsewhere.sent == online.sent[1:]  # once only
