"""The broker role's tables: connection records and the revocations still in force.

A connection's state changes are single conditional UPDATEs whose row count says whether they
happened, so several brokers (one per client channel, another for a re-attach) and both databases
agree without locks: e.g. only the end of the channel last attached may detach a shell, and a
connection that is CLOSED never opens again. Methods that write take the caller's session, so the
broker commits each change and its audit event as one transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
from collections.abc import Collection, Sequence

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mrzap.storage import Database, rowcount

__all__ = [
    "ConnectionQuery",
    "ConnectionRecord",
    "ConnectionState",
    "ConnectionStore",
    "StoredRevocation",
]


class ConnectionState(enum.Enum):
    """Where a connection stands; values are the wire numbers of the contract."""

    PENDING = 1
    OPEN = 2
    DETACHED = 3
    CLOSED = 4


#: The states a connection can still leave.
LIVE_STATES = (ConnectionState.PENDING, ConnectionState.OPEN, ConnectionState.DETACHED)


class _Base(DeclarativeBase):
    pass


class _ConnectionRow(_Base):
    __tablename__ = "broker_connections"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    target_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(64))
    subject_iss: Mapped[str] = mapped_column(String(1024))
    subject_sub: Mapped[str] = mapped_column(String(255))
    subject_email: Mapped[str] = mapped_column(String(320))
    verb: Mapped[int] = mapped_column(Integer)
    target_user: Mapped[str] = mapped_column(String(255))
    destination: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16))
    channel_id: Mapped[str] = mapped_column(String(64))
    grant_ids: Mapped[str] = mapped_column(Text)
    broker_id: Mapped[str] = mapped_column(String(253))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float)
    close_reason: Mapped[str] = mapped_column(String(1024))
    recorded: Mapped[bool] = mapped_column(Boolean)


class _RevocationRow(_Base):
    __tablename__ = "broker_revocations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    signed: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(String(1024))
    issued_at: Mapped[float] = mapped_column(Float)
    kept_until: Mapped[float] = mapped_column(Float)


@dataclasses.dataclass(frozen=True)
class ConnectionRecord:
    """A user's use of a target under one or more grants, as the broker keeps it."""

    id: str
    """The channel id of the channel that opened it."""
    target_id: str
    user_id: str
    subject_iss: str
    subject_sub: str
    subject_email: str
    verb: int
    """The `bastion.mrzap.v1.Verb` number."""
    target_user: str
    destination: bytes
    """A serialized `bastion.mrzap.v1.Destination` for tunnels; empty otherwise."""
    state: ConnectionState
    channel_id: str
    """The channel last attached."""
    grant_ids: tuple[str, ...]
    """Oldest first: the opening grant, then one per re-attach."""
    broker_id: str
    created_at: float
    expires_at: float
    """The opening grant's session_expires_at; a re-attach's grant may extend it."""
    closed_at: float | None
    close_reason: str
    recorded: bool


@dataclasses.dataclass(frozen=True)
class ConnectionQuery:
    """Which connections to list; the conditions combine with AND, empty ones match all."""

    user_id: str = ""
    target_id: str = ""
    states: Collection[ConnectionState] = ()


@dataclasses.dataclass(frozen=True)
class StoredRevocation:
    """A signed revocation still in force."""

    id: str
    signed: bytes
    """The exact serialized Signed envelope."""
    issued_at: float
    kept_until: float


def _record(row: _ConnectionRow) -> ConnectionRecord:
    return ConnectionRecord(
        id=row.id,
        target_id=row.target_id,
        user_id=row.user_id,
        subject_iss=row.subject_iss,
        subject_sub=row.subject_sub,
        subject_email=row.subject_email,
        verb=row.verb,
        target_user=row.target_user,
        destination=row.destination,
        state=ConnectionState[row.state],
        channel_id=row.channel_id,
        grant_ids=tuple(json.loads(row.grant_ids)),
        broker_id=row.broker_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        closed_at=row.closed_at,
        close_reason=row.close_reason,
        recorded=row.recorded,
    )


class ConnectionStore:
    """Reads and writes the broker role's tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        """A session in a transaction that commits when the block ends without an exception."""
        return self._db.transaction()

    # Connections.

    async def add(self, s: AsyncSession, record: ConnectionRecord) -> None:
        """Insert a new connection record."""
        values = dataclasses.asdict(record)
        values["state"] = record.state.name
        values["grant_ids"] = json.dumps(list(record.grant_ids))
        await s.execute(insert(_ConnectionRow).values(**values))

    async def get(
        self, connection_id: str, s: AsyncSession | None = None
    ) -> ConnectionRecord | None:
        """The connection, or None."""
        if s is None:
            async with self._db.session() as own:
                return await self.get(connection_id, own)
        row = await s.get(_ConnectionRow, connection_id)
        return None if row is None else _record(row)

    async def attach(
        self,
        s: AsyncSession,
        record: ConnectionRecord,
        grant_id: str,
        channel_id: str,
        expires_at: float,
    ) -> bool:
        """Add a re-attach's grant and channel to a connection that is not CLOSED, as read in
        `record`; False if it changed meanwhile (closed, or another re-attach came first)."""
        result = await s.execute(
            update(_ConnectionRow)
            .where(
                _ConnectionRow.id == record.id,
                _ConnectionRow.state != ConnectionState.CLOSED.name,
                _ConnectionRow.grant_ids == json.dumps(list(record.grant_ids)),
            )
            .values(
                grant_ids=json.dumps([*record.grant_ids, grant_id]),
                channel_id=channel_id,
                expires_at=max(record.expires_at, expires_at),
            )
        )
        return rowcount(result) == 1

    async def set_state(
        self,
        s: AsyncSession,
        connection_id: str,
        state: ConnectionState,
        *,
        channel_id: str | None = None,
        now: float | None = None,
        reason: str = "",
    ) -> bool:
        """Move a live connection to `state`, if its last attached channel is `channel_id` (when
        given); CLOSED also records `now` and `reason`. Returns whether it moved."""
        query = update(_ConnectionRow).where(
            _ConnectionRow.id == connection_id,
            _ConnectionRow.state.in_([live.name for live in LIVE_STATES]),
        )
        if channel_id is not None:
            query = query.where(_ConnectionRow.channel_id == channel_id)
        values: dict[str, object] = {"state": state.name}
        if state is ConnectionState.CLOSED:
            values.update(closed_at=now, close_reason=reason[:1024])
        result = await s.execute(query.values(**values))
        return rowcount(result) == 1

    async def live_of(
        self,
        s: AsyncSession,
        *,
        user_id: str = "",
        target_id: str = "",
        expired_by: float | None = None,
        pending_before: float | None = None,
    ) -> list[ConnectionRecord]:
        """Connections not CLOSED: of `user_id`, to `target_id`, or (with `expired_by`) past
        their expiry, or (with `pending_before`) still PENDING though created before it."""
        query = select(_ConnectionRow).where(
            _ConnectionRow.state.in_([live.name for live in LIVE_STATES])
        )
        if user_id:
            query = query.where(_ConnectionRow.user_id == user_id)
        if target_id:
            query = query.where(_ConnectionRow.target_id == target_id)
        if expired_by is not None:
            expired = _ConnectionRow.expires_at <= expired_by
            if pending_before is not None:
                expired = or_(
                    expired,
                    and_(
                        _ConnectionRow.state == ConnectionState.PENDING.name,
                        _ConnectionRow.created_at <= pending_before,
                    ),
                )
            query = query.where(expired)
        return [_record(row) for row in (await s.execute(query)).scalars()]

    async def started_on(
        self, s: AsyncSession, target_id: str, created_before: float
    ) -> list[ConnectionRecord]:
        """The target's OPEN and DETACHED connections created before `created_before` (PENDING
        ones have started nowhere yet)."""
        query = select(_ConnectionRow).where(
            _ConnectionRow.target_id == target_id,
            _ConnectionRow.state.in_([ConnectionState.OPEN.name, ConnectionState.DETACHED.name]),
            _ConnectionRow.created_at < created_before,
        )
        return [_record(row) for row in (await s.execute(query)).scalars()]

    async def live_matching(
        self, s: AsyncSession, grant_ids: Sequence[str], subjects: Sequence[tuple[str, str]]
    ) -> list[ConnectionRecord]:
        """Connections not CLOSED that hold one of `grant_ids` or belong to one of `subjects`
        (issuer, subject)."""
        conditions = [
            # Grant ids are uuids kept in a JSON list: a quoted match cannot hit a part of one.
            _ConnectionRow.grant_ids.contains(json.dumps(grant_id), autoescape=True)
            for grant_id in grant_ids
        ]
        conditions += [
            and_(_ConnectionRow.subject_iss == iss, _ConnectionRow.subject_sub == sub)
            for iss, sub in subjects
        ]
        if not conditions:
            return []
        query = select(_ConnectionRow).where(
            _ConnectionRow.state.in_([live.name for live in LIVE_STATES]), or_(*conditions)
        )
        return [_record(row) for row in (await s.execute(query)).scalars()]

    async def search(
        self, query: ConnectionQuery, cursor: tuple[float, str] | None, limit: int
    ) -> list[ConnectionRecord]:
        """Up to `limit` matching connections, newest first, after `cursor` (created_at, id)."""
        statement = select(_ConnectionRow)
        if query.user_id:
            statement = statement.where(_ConnectionRow.user_id == query.user_id)
        if query.target_id:
            statement = statement.where(_ConnectionRow.target_id == query.target_id)
        if query.states:
            statement = statement.where(_ConnectionRow.state.in_([s.name for s in query.states]))
        if cursor is not None:
            created_at, connection_id = cursor
            statement = statement.where(
                or_(
                    _ConnectionRow.created_at < created_at,
                    and_(
                        _ConnectionRow.created_at == created_at, _ConnectionRow.id < connection_id
                    ),
                )
            )
        statement = statement.order_by(
            _ConnectionRow.created_at.desc(), _ConnectionRow.id.desc()
        ).limit(limit)
        async with self._db.session() as s:
            return [_record(row) for row in (await s.execute(statement)).scalars()]

    # Revocations.

    async def add_revocation(
        self, s: AsyncSession, revocation: StoredRevocation, reason: str
    ) -> None:
        """Keep a signed revocation until its `kept_until`."""
        await s.execute(
            insert(_RevocationRow).values(
                id=revocation.id,
                signed=revocation.signed,
                reason=reason[:1024],
                issued_at=revocation.issued_at,
                kept_until=revocation.kept_until,
            )
        )

    async def revocations_in_force(
        self, now: float, issued_after: float | None = None
    ) -> Sequence[StoredRevocation]:
        """Revocations whose `kept_until` is still ahead (issued after `issued_after`, when
        given), oldest first."""
        query = select(_RevocationRow).where(_RevocationRow.kept_until > now)
        if issued_after is not None:
            query = query.where(_RevocationRow.issued_at > issued_after)
        async with self._db.session() as s:
            rows = (await s.execute(query.order_by(_RevocationRow.issued_at))).scalars()
            return [StoredRevocation(r.id, r.signed, r.issued_at, r.kept_until) for r in rows]

    async def forget_revocations(self, now: float) -> int:
        """Delete the revocations no longer in force; how many."""
        async with self._db.session() as s, s.begin():
            result = await s.execute(delete(_RevocationRow).where(_RevocationRow.kept_until <= now))
            return rowcount(result)
