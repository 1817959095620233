"""The audit role's table and the queries on it.

Each event is stored whole (the serialized `AuditEvent`) beside the columns the log is searched
by, so new event fields never need a migration to be kept.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import BigInteger, Float, Integer, LargeBinary, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mrzap.storage import Database

__all__ = ["INDEXED_ID_LENGTH", "AuditStore", "EventQuery", "EventRecord"]

#: The longest user, target or connection id the searchable columns hold.
INDEXED_ID_LENGTH = 64


class _Base(DeclarativeBase):
    pass


class _EventRow(_Base):
    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(36))
    time: Mapped[float] = mapped_column(Float)
    kind: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[str] = mapped_column(String(INDEXED_ID_LENGTH))
    target_id: Mapped[str] = mapped_column(String(INDEXED_ID_LENGTH))
    connection_id: Mapped[str] = mapped_column(String(INDEXED_ID_LENGTH))
    event: Mapped[bytes] = mapped_column(LargeBinary)
    search_text: Mapped[str] = mapped_column(Text)


@dataclasses.dataclass(frozen=True)
class EventRecord:
    """One event as stored: its serialized form and the values it is searched by."""

    id: str
    time: float
    kind: int
    outcome: int
    user_id: str
    target_id: str
    connection_id: str
    event: bytes
    search_text: str
    """Lower-cased words of the event (messages, commands, methods, emails) for text search."""
    seq: int = 0
    """The insertion order, set by the store (0 before)."""


@dataclasses.dataclass(frozen=True)
class EventQuery:
    """Which events to list; conditions combine with AND, and empty ones match everything."""

    kinds: frozenset[int] = frozenset()
    """Only events of these kinds (`bastion.audit.v1.EventKind` numbers)."""

    outcomes: frozenset[int] = frozenset()
    """Only events with these outcomes (`bastion.audit.v1.EventOutcome` numbers)."""

    start: float | None = None
    """Only events at or after this time (Unix seconds)."""

    end: float | None = None
    """Only events before this time (Unix seconds)."""

    user_id: str = ""
    """Only events caused by this user."""

    target_id: str = ""
    """Only events about this target."""

    connection_id: str = ""
    """Only events about this connection."""

    text: str = ""
    """Only events whose text contains this, ignoring case."""


class AuditStore:
    """Reads and writes the audit role's table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: EventRecord, session: AsyncSession | None = None) -> None:
        """Store an event, inside `session`'s transaction when given (so it commits with it)."""
        values = dataclasses.asdict(record)
        del values["seq"]
        row = _EventRow(**values)
        if session is not None:
            session.add(row)
            await session.flush()
            return
        async with self._db.session() as s, s.begin():
            s.add(row)

    async def search(
        self,
        query: EventQuery,
        after: tuple[float, int] | None,
        limit: int,
        *,
        oldest_first: bool = False,
    ) -> list[EventRecord]:
        """Up to `limit` matching events, newest first (the later recorded first among events of
        the same time), starting after the `after` (time, seq); `oldest_first` reverses it."""
        if oldest_first:
            statement = select(_EventRow).order_by(_EventRow.time, _EventRow.seq)
        else:
            statement = select(_EventRow).order_by(_EventRow.time.desc(), _EventRow.seq.desc())
        if query.kinds:
            statement = statement.where(_EventRow.kind.in_(sorted(query.kinds)))
        if query.outcomes:
            statement = statement.where(_EventRow.outcome.in_(sorted(query.outcomes)))
        if query.start is not None:
            statement = statement.where(_EventRow.time >= query.start)
        if query.end is not None:
            statement = statement.where(_EventRow.time < query.end)
        for column, value in (
            (_EventRow.user_id, query.user_id),
            (_EventRow.target_id, query.target_id),
            (_EventRow.connection_id, query.connection_id),
        ):
            if value:
                statement = statement.where(column == value)
        if query.text:
            statement = statement.where(
                _EventRow.search_text.contains(query.text.lower(), autoescape=True)
            )
        if after is not None and oldest_first:
            time, seq = after
            statement = statement.where(
                (_EventRow.time > time) | ((_EventRow.time == time) & (_EventRow.seq > seq))
            )
        elif after is not None:
            time, seq = after
            statement = statement.where(
                (_EventRow.time < time) | ((_EventRow.time == time) & (_EventRow.seq < seq))
            )
        async with self._db.session() as s:
            rows = await s.scalars(statement.limit(limit))
            return [_record(row) for row in rows]


def _record(row: _EventRow) -> EventRecord:
    return EventRecord(
        id=row.id,
        time=row.time,
        kind=row.kind,
        outcome=row.outcome,
        user_id=row.user_id,
        target_id=row.target_id,
        connection_id=row.connection_id,
        event=row.event,
        search_text=row.search_text,
        seq=row.seq,
    )
