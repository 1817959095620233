"""The audit log: every role records what happened here, and administrators search it.

Events are `bastion.audit.v1.AuditEvent` messages. A role that changes state records the event in
the same transaction as the change (pass its session), so the log never misses a change that
happened nor shows one that was rolled back; refusals are recorded on their own.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession

from bastion.audit.v1 import audit_service_pb2 as pb
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.clock import Clock, SystemClock
from mrzap.errors import InvalidArgument
from mrzap.paging import decode_page_token, encode_page_token, page_limit
from mrzap.timestamps import from_timestamp, to_timestamp

from ._store import INDEXED_ID_LENGTH, AuditStore, EventQuery, EventRecord

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "Actor", "AuditLog", "Outcome"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class Outcome(enum.Enum):
    """Whether what an event records was allowed (values are the wire numbers)."""

    ALLOWED = pb.EVENT_OUTCOME_ALLOWED
    DENIED = pb.EVENT_OUTCOME_DENIED


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who or what caused an event, as far as it is known."""

    user_id: str = ""
    """The service's id of the user; empty for API keys and agents."""

    api_key_id: str = ""
    """The API key used; empty otherwise."""

    address: str = ""
    """The network address the call came from (a gRPC peer string), when there was a call."""


class AuditLog:
    """Records events and lists them, newest first."""

    def __init__(self, store: AuditStore, clock: Clock | None = None) -> None:
        self._store = store
        self._clock = clock or SystemClock()

    async def record(
        self, event: pb.AuditEvent, *, session: AsyncSession | None = None
    ) -> pb.AuditEvent:
        """Store a copy of `event` with a new id (and the current time unless it has one).

        With `session`, the event is written in that transaction and commits or rolls back
        with it. Returns the stored event.
        """
        stored = pb.AuditEvent()
        stored.CopyFrom(event)
        stored.id = str(uuid.uuid4())
        if not stored.HasField("time"):
            stored.time.CopyFrom(to_timestamp(self._clock.now()))
        await self._store.add(_record(stored), session)
        return stored

    async def record_target(
        self,
        target_id: str,
        state: int,
        message: str,
        *,
        outcome: Outcome,
        actor: Actor | None = None,
        session: AsyncSession | None = None,
    ) -> pb.AuditEvent:
        """Record a target's lifecycle change, or a refused agent or registration.

        `state` is the `bastion.registry.v1.TargetState` number entered (0 for a refusal that
        changed nothing); `message` must hold no secret; `target_id` is "" when none is known.
        """
        actor = actor or Actor()
        event = pb.AuditEvent(
            kind=pb.EVENT_KIND_TARGET,
            outcome=outcome.value,
            actor=pb.Actor(
                user_id=actor.user_id,
                api_key_id=actor.api_key_id,
                target_id=target_id,
                address=actor.address,
            ),
            target=pb.TargetDetails(
                target_id=target_id,
                state=registry_pb.TargetState.ValueType(state),
                message=message,
            ),
        )
        return await self.record(event, session=session)

    async def list_events(
        self, query: EventQuery, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[pb.AuditEvent], str]:
        """A page of matching events, newest first, and the token of the next page.

        Among events of the same time, the one recorded later comes first.
        """
        limit = page_limit(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if query.start is not None and query.end is not None and query.start >= query.end:
            raise InvalidArgument("the time range is empty: start_time must be before end_time")
        records = await self._store.search(query, _cursor(page_token), limit + 1)
        page = records[:limit]
        next_token = ""
        if len(records) > limit:
            next_token = encode_page_token((repr(page[-1].time), str(page[-1].seq)))
        return [_event(record) for record in page], next_token

    async def export_events(
        self, query: EventQuery, batch_size: int = MAX_PAGE_SIZE
    ) -> AsyncIterator[pb.AuditEvent]:
        """Every matching event, oldest first, read from the store a batch at a time."""
        if query.start is not None and query.end is not None and query.start >= query.end:
            raise InvalidArgument("the time range is empty: start_time must be before end_time")
        after: tuple[float, int] | None = None
        while True:
            records = await self._store.search(query, after, batch_size, oldest_first=True)
            for record in records:
                yield _event(record)
            if len(records) < batch_size:
                return
            after = (records[-1].time, records[-1].seq)


def _event(record: EventRecord) -> pb.AuditEvent:
    event = pb.AuditEvent()
    event.ParseFromString(record.event)
    return event


def _cursor(page_token: str) -> tuple[float, int] | None:
    cursor = decode_page_token(page_token)
    if cursor is None:
        return None
    try:
        return float(cursor[0]), int(cursor[1])
    except ValueError:
        raise InvalidArgument("the page token is not valid") from None


def _record(event: pb.AuditEvent) -> EventRecord:
    details = event.WhichOneof("details")
    target_id = event.actor.target_id
    connection_id = ""
    words = [event.actor.subject.email, event.actor.address]
    words += [reason.message for reason in event.reasons]
    words += [reason.policy_name for reason in event.reasons]
    if details == "target":
        target_id = event.target.target_id or target_id
        words.append(event.target.message)
    elif details == "connection":
        target_id = event.connection.target_id or target_id
        connection_id = event.connection.connection_id
        words.append(event.connection.target_user)
    elif details == "command":
        target_id = event.command.target_id or target_id
        connection_id = event.command.connection_id
        words += [event.command.target_user, event.command.command]
    elif details == "api_call":
        words.append(event.api_call.method)
    return EventRecord(
        id=event.id,
        time=from_timestamp(event.time),
        kind=event.kind,
        outcome=event.outcome,
        user_id=_indexed(event.actor.user_id),
        target_id=_indexed(target_id),
        connection_id=_indexed(connection_id),
        event=event.SerializeToString(),
        search_text="\n".join(word for word in words if word).lower(),
    )


def _indexed(value: str) -> str:
    # Ids come from callers (a refused agent may name anything): an overlong one is kept in the
    # event itself but not in the searchable column, whose width is fixed.
    return value if len(value) <= INDEXED_ID_LENGTH else ""
