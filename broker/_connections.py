"""Connection records: what each user's connections are doing, kept by the broker in the store.

A connection is born PENDING when OpenConnection issues its grant; its id is the channel id of that
first channel, on the broker and the agent alike. The broker learns the rest from the channels it
relays and from the agent:

    agent's SYN-ACK        → OPEN        (audit OPENED, or ATTACHED for a re-attach)
    agent's Reject         → CLOSED      for a new connection (a re-attach leaves it as it was;
                                          audit REJECTED with the agent's reason code)
    agent closes channel   → CLOSED      (the process ended), or DETACHED for a shell the agent
                                          says runs on (it ended the channel for a broken frame)
    client leaves, or the  → DETACHED    for a shell, which keeps running on the target;
    broker loses the agent   CLOSED      for anything else (the agent ends it)
    revocation / close     → CLOSED      (audit CLOSED with the reason)
    the agent restarted    → CLOSED      (its AgentStarted: OPEN and DETACHED ones from before)
    the target terminated  → CLOSED      (offline past its cleanup timeout: its agent is gone)
    a detached shell ends  → CLOSED      (the agent's ConnectionEnded, for its own target only)
    session_expires_at     → CLOSED      (noticed when connections are listed or re-attached)

Only the end of the channel last attached to a connection may change it (another client may
have re-attached meanwhile), and nothing leaves CLOSED; the store's conditional UPDATEs enforce
both. Channel events are written by one background task in order, so the relay's data path never
waits for the database; `flush()` waits for them (tests, shutdown).

`Connections` also keeps the channels this broker is relaying, so a revocation can end them at
once with ABORTED (the agent ends the processes when the signed revocation reaches it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from audit import AuditLog
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as policy_pb
from mrzap.clock import Clock, SystemClock
from mrzap.errors import Aborted, MrzapError, NotFound
from mrzap.paging import decode_time_token, encode_time_token, page_limit

from ._connection_store import (
    ConnectionQuery,
    ConnectionRecord,
    ConnectionState,
    ConnectionStore,
)
from ._relay import ChannelRelay, RelayedChannel

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "ChannelContext",
    "ChannelOutcome",
    "Connections",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

#: A PENDING connection whose channel has not come by now never will (a grant's start_by is a
#: minute away); it is closed as expired.
_PENDING_LIMIT_S = 300.0
#: How often lists look for expired connections.
_EXPIRY_CHECK_S = 5.0

_log = logging.getLogger("mrzap.broker.connections")


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelContext:
    """What the broker knows of a channel it issued: whose it is and for which connection."""

    channel_id: str
    connection_id: str
    """Equal to `channel_id` for a new connection; the re-attached one's otherwise."""
    user_id: str
    subject_iss: str
    subject_sub: str
    target_id: str
    verb: int
    target_user: str
    grant_id: str

    @property
    def reattach(self) -> bool:
        """Whether the channel re-attaches to a running shell."""
        return self.connection_id != self.channel_id

    @property
    def shell(self) -> bool:
        """Whether the connection outlives its client (only shells do)."""
        return self.verb == mrzap_pb2.VERB_SHELL


class ChannelOutcome(enum.Enum):
    """How a relayed channel ended, as far as the broker can tell."""

    AGENT_CLOSED = "the agent closed the channel"
    """The agent ended it after its SYN-ACK: the process is over."""
    AGENT_DETACHED = "the agent ended the channel; its shell runs on"
    """The agent ended it for a fault of the channel (ChannelClose.detached): a shell stays."""
    LEFT = "the client or the agent went away"
    """The client left, broke the rules, or the broker lost the agent: a shell stays."""
    ABORTED = "the connection was closed"
    """A revocation ended it; whoever revoked has closed the record."""
    UNANSWERED = "the agent never answered"
    """No SYN-ACK or Reject came (or the target was offline)."""
    REJECTED = "the agent rejected the SYN"
    """The Reject has been recorded already."""


#: Channel endings after which a shell runs on (DETACHED) and anything else is closed.
_SHELL_STAYS = frozenset(
    outcome.name
    for outcome in (
        ChannelOutcome.LEFT,
        ChannelOutcome.AGENT_DETACHED,
        ChannelOutcome.UNANSWERED,
    )
)
#: Why a detached shell's record was closed when its agent said it ended.
_ENDED_DETACHED = "the shell ended while detached"
#: Why the connections of a restarted agent were closed.
_RESTARTED = "the agent restarted: what ran on the target has ended"
#: Why the connections of a target that became TERMINATED were closed.
_TERMINATED = "the target was terminated: its agent was offline past the cleanup timeout"


class Connections:
    """The organisation's connection records, and the channels this broker relays."""

    def __init__(
        self,
        store: ConnectionStore,
        audit: AuditLog,
        broker_id: str,
        relay: ChannelRelay,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._broker_id = broker_id
        self._relay = relay
        self._clock = clock or SystemClock()
        self._relaying: dict[str, tuple[ChannelContext, RelayedChannel]] = {}
        self._expiry_checked = float("-inf")
        self._writes: asyncio.Queue[tuple[ChannelContext, str, bytes]] | None = None
        self._writer: asyncio.Task[None] | None = None

    # --- OpenConnection ------------------------------------------------------------------------

    async def check_reattach(
        self, connection_id: str, user_id: str, target_id: str, target_user: str
    ) -> ConnectionRecord:
        """The caller's live shell `connection_id` on that target as that target user.

        NotFound otherwise -- one answer for "no such connection", "closed" and "not yours", so
        ids of other users' connections stay secret. Called before any grant is issued.
        """
        await self.close_expired()
        record = await self._store.get(connection_id)
        if (
            record is None
            or record.user_id != user_id
            or record.state is ConnectionState.CLOSED
            or record.verb != mrzap_pb2.VERB_SHELL
            or record.target_id != target_id
            or record.target_user != target_user
        ):
            raise NotFound(f"no connection {connection_id!r} of this user to re-attach to")
        return record

    async def opened(
        self,
        context: ChannelContext,
        grant: mrzap_pb2.Grant,
        email: str,
        reattaching: ConnectionRecord | None,
    ) -> None:
        """Record the grant OpenConnection issued: a new PENDING connection, or one more grant
        (and the newest channel) of the connection being re-attached."""
        expires_at = grant.session_expires_at.seconds + grant.session_expires_at.nanos / 1e9
        async with self._store.transaction() as s:
            if reattaching is None:
                await self._store.add(
                    s,
                    ConnectionRecord(
                        id=context.connection_id,
                        target_id=context.target_id,
                        user_id=context.user_id,
                        subject_iss=context.subject_iss,
                        subject_sub=context.subject_sub,
                        subject_email=email,
                        verb=context.verb,
                        target_user=context.target_user,
                        destination=(
                            grant.destination.SerializeToString()
                            if grant.HasField("destination")
                            else b""
                        ),
                        state=ConnectionState.PENDING,
                        channel_id=context.channel_id,
                        grant_ids=(context.grant_id,),
                        broker_id=self._broker_id,
                        created_at=self._clock.now(),
                        expires_at=expires_at,
                        closed_at=None,
                        close_reason="",
                        recorded=grant.record.output or grant.record.input,
                    ),
                )
            elif not await self._store.attach(
                s, reattaching, context.grant_id, context.channel_id, expires_at
            ):
                raise NotFound(f"connection {context.connection_id!r} changed meanwhile; try again")

    # --- Channel -------------------------------------------------------------------------------

    def relaying(self, context: ChannelContext, channel: RelayedChannel) -> None:
        """The broker relays `channel`; a revocation of its grant or user ends it."""
        self._relaying[context.channel_id] = (context, channel)

    def answered(self, context: ChannelContext, reject: bytes | None) -> None:
        """The agent's answer passed through: a SYN-ACK (`reject` None) or a Reject."""
        self._enqueue(context, "reject" if reject is not None else "syn_ack", reject or b"")

    def ended(self, context: ChannelContext, outcome: ChannelOutcome) -> None:
        """The client's channel call is over."""
        self._relaying.pop(context.channel_id, None)
        self._enqueue(context, outcome.name, b"")

    async def flush(self) -> None:
        """Wait until every channel event so far is written."""
        if self._writes is not None:
            await self._writes.join()

    async def stop(self) -> None:
        """Write what is queued, then stop the writer."""
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    # --- closing -------------------------------------------------------------------------------

    def abort_revoked(
        self, grant_ids: Iterable[str], subjects: Iterable[tuple[str, str]], reason: str
    ) -> list[str]:
        """End this broker's relayed channels under `grant_ids` or of `subjects` with ABORTED;
        the ids of their connections."""
        grants, users = set(grant_ids), set(subjects)
        ended = []
        for context, channel in list(self._relaying.values()):
            if context.grant_id in grants or (context.subject_iss, context.subject_sub) in users:
                # The client's call ends with ABORTED; the agent hears ChannelClose after the
                # revocation, which went into the same control stream first.
                self._relay.refuse_client(channel, Aborted(f"the connection was closed: {reason}"))
                ended.append(context.connection_id)
        return ended

    async def close_revoked(
        self,
        grant_ids: Sequence[str],
        subjects: Sequence[tuple[str, str]],
        reason: str,
        actor_user_id: str = "",
    ) -> list[str]:
        """Close (and audit) every live connection under `grant_ids` or of `subjects`; their ids.

        Call after the revocation went out (see `Revocations.revoke`).
        """
        return await self._close_found(
            lambda s: self._store.live_matching(s, grant_ids, subjects),
            reason,
            self._clock.now(),
            actor_user_id,
        )

    async def close_revoked_users(
        self, grant_ids: Sequence[str], subjects: Sequence[tuple[str, str]], reason: str
    ) -> list[str]:
        """`close_revoked` for the users of a revocation only (a `Revocations.after_revoke`
        hook: grants revoked by id belong to CloseConnection, which closes its record itself)."""
        if not subjects:
            return []
        return await self.close_revoked((), subjects, reason)

    async def close_ended_by_restart(self, target_id: str, started_before: float) -> list[str]:
        """The target's agent process restarted: close (and audit) the target's connections that
        started before `started_before` (when the new process was welcomed); their ids."""
        # What this broker's relay still knows of those channels is written first, so a
        # connection the old process ended normally keeps that ending.
        await self.flush()
        return await self._close_found(
            lambda s: self._store.started_on(s, target_id, started_before),
            _RESTARTED,
            self._clock.now(),
        )

    async def close_terminated(self, target_id: str) -> list[str]:
        """The target became TERMINATED (its agent was offline past the cleanup timeout): close
        (and audit) its connections that are not closed yet; their ids."""
        await self.flush()  # endings this broker already knows of keep their own reasons
        return await self._close_found(
            lambda s: self._store.live_of(s, target_id=target_id), _TERMINATED, self._clock.now()
        )

    async def close_ended_detached(self, target_id: str, connection_id: str) -> bool:
        """The agent of `target_id` says the detached shell `connection_id` ended by itself:
        close its record if it is a DETACHED connection to that target; whether it closed."""
        await self.flush()  # a detachment still queued comes first
        async with self._store.transaction() as s:
            record = await self._store.get(connection_id, s)
            # Only the target's own agent may end its connections: another agent naming this id
            # changes nothing.
            if record is None or record.target_id != target_id:
                return False
            if record.state is not ConnectionState.DETACHED:
                return False
            return await self._close(s, record, _ENDED_DETACHED, self._clock.now(), "")

    async def close_expired(self) -> list[str]:
        """Close the connections whose session has expired (the agent has ended them).

        Lists and re-attach checks call it; it looks at the store at most once per
        `_EXPIRY_CHECK_S`, since expiry is a matter of minutes, not milliseconds.
        """
        now = self._clock.now()
        if now - self._expiry_checked < _EXPIRY_CHECK_S:
            return []
        self._expiry_checked = now
        return await self._close_found(
            lambda s: self._store.live_of(s, expired_by=now, pending_before=now - _PENDING_LIMIT_S),
            "the session expired",
            now,
        )

    async def _close_found(
        self,
        find: Callable[[AsyncSession], Awaitable[list[ConnectionRecord]]],
        reason: str,
        now: float,
        actor_user_id: str = "",
    ) -> list[str]:
        """Close (and audit), in one transaction, the connections `find` reads; the ids of those
        that were still live."""
        closed = []
        async with self._store.transaction() as s:
            for record in await find(s):
                if await self._close(s, record, reason, now, actor_user_id):
                    closed.append(record.id)
        return closed

    async def _close(
        self,
        s: AsyncSession,
        record: ConnectionRecord,
        reason: str,
        now: float,
        actor_user_id: str,
    ) -> bool:
        if not await self._store.set_state(
            s, record.id, ConnectionState.CLOSED, now=now, reason=reason
        ):
            return False
        await self._audit.record(
            _event(
                record,
                audit_pb.CONNECTION_EVENT_TYPE_CLOSED,
                actor_user_id or record.user_id,
                reason=reason,
            ),
            session=s,
        )
        return True

    # --- reading -------------------------------------------------------------------------------

    async def live_ids_of(self, user_id: str) -> list[str]:
        """The ids of the user's connections that are not CLOSED."""
        async with self._store.transaction() as s:
            return [record.id for record in await self._store.live_of(s, user_id=user_id)]

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        """The connection as stored, or None (one read: expiry is noticed by `page`)."""
        return await self._store.get(connection_id)

    async def page(
        self, query: ConnectionQuery, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ConnectionRecord], str]:
        """A page of matching connections, newest first, and the next page's token."""
        limit = page_limit(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        await self.close_expired()
        records = await self._store.search(query, decode_time_token(page_token), limit + 1)
        page = records[:limit]
        next_token = ""
        if len(records) > limit:
            next_token = encode_time_token(page[-1].created_at, page[-1].id)
        return page, next_token

    # --- the writer ----------------------------------------------------------------------------

    def _enqueue(self, context: ChannelContext, what: str, data: bytes) -> None:
        if self._writes is None:
            self._writes = asyncio.Queue()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write_all(self._writes), name="broker-connection-records"
            )
        self._writes.put_nowait((context, what, data))

    async def _write_all(self, writes: asyncio.Queue[tuple[ChannelContext, str, bytes]]) -> None:
        while True:
            context, what, data = await writes.get()
            try:
                await self._write(context, what, data)
            except (MrzapError, OSError, RuntimeError) as error:
                _log.error("could not record connection %s: %s", context.connection_id, error)
            except Exception:  # a record lost must not stop the records after it
                _log.exception("could not record connection %s", context.connection_id)
            finally:
                writes.task_done()

    async def _write(self, context: ChannelContext, what: str, data: bytes) -> None:
        now = self._clock.now()
        async with self._store.transaction() as s:
            record = await self._store.get(context.connection_id, s)
            if record is None:
                return
            if what == "syn_ack":
                if await self._store.set_state(
                    s, record.id, ConnectionState.OPEN, channel_id=context.channel_id
                ):
                    kind = (
                        audit_pb.CONNECTION_EVENT_TYPE_ATTACHED
                        if context.reattach
                        else audit_pb.CONNECTION_EVENT_TYPE_OPENED
                    )
                    await self._audit.record(
                        _event(record, kind, record.user_id, context=context), session=s
                    )
            elif what == "reject":
                await self._audit.record(
                    _event(
                        record,
                        audit_pb.CONNECTION_EVENT_TYPE_REJECTED,
                        record.user_id,
                        context=context,
                        reject_code=_reject_code(data),
                        outcome=audit_pb.EVENT_OUTCOME_DENIED,
                    ),
                    session=s,
                )
                if not context.reattach:
                    await self._close(s, record, "the agent rejected the SYN", now, "")
            elif what in _SHELL_STAYS:
                if what == ChannelOutcome.UNANSWERED.name and context.reattach:
                    return  # the shell is as it was
                if context.shell and what != ChannelOutcome.UNANSWERED.name:
                    if await self._store.set_state(
                        s, record.id, ConnectionState.DETACHED, channel_id=context.channel_id
                    ):
                        await self._audit.record(
                            _event(record, audit_pb.CONNECTION_EVENT_TYPE_DETACHED, record.user_id),
                            session=s,
                        )
                elif record.channel_id == context.channel_id:
                    await self._close(s, record, ChannelOutcome[what].value, now, "")
            elif (
                what == ChannelOutcome.AGENT_CLOSED.name and record.channel_id == context.channel_id
            ):
                await self._close(s, record, "the process ended", now, "")


def _reject_code(signed_reject: bytes) -> int:
    # For the audit only: the broker cannot tell a genuine Reject from a forged one (the client
    # verifies it), so the code is what the agent's message says, unverified.
    try:
        signed = mrzap_pb2.Signed.FromString(signed_reject)
        return mrzap_pb2.Reject.FromString(signed.payload).code
    except Exception:  # a malformed Reject is the client's to report
        return mrzap_pb2.REASON_CODE_UNSPECIFIED


def _event(
    record: ConnectionRecord,
    kind: audit_pb.ConnectionEventType.ValueType,
    actor_user_id: str,
    *,
    context: ChannelContext | None = None,
    reason: str = "",
    reject_code: int = 0,
    outcome: audit_pb.EventOutcome.ValueType = audit_pb.EVENT_OUTCOME_ALLOWED,
) -> audit_pb.AuditEvent:
    details = audit_pb.ConnectionDetails(
        type=kind,
        connection_id=record.id,
        channel_id=context.channel_id if context else "",
        target_id=record.target_id,
        verb=mrzap_pb2.Verb.ValueType(record.verb),
        target_user=record.target_user,
        grant_id=context.grant_id if context else record.grant_ids[-1],
        reject_code=mrzap_pb2.ReasonCode.ValueType(reject_code),
    )
    if record.destination:
        details.destination.ParseFromString(record.destination)
    event = audit_pb.AuditEvent(
        kind=audit_pb.EVENT_KIND_CONNECTION,
        outcome=outcome,
        actor=audit_pb.Actor(user_id=actor_user_id),
        connection=details,
    )
    if actor_user_id == record.user_id:
        event.actor.subject.CopyFrom(
            mrzap_pb2.Subject(
                iss=record.subject_iss, sub=record.subject_sub, email=record.subject_email
            )
        )
    if reason:
        event.reasons.append(policy_pb.DecisionReason(message=reason))
    return event
