"""The audit role's recording tables and the queries on them (PROTOCOL.md section 8).

`audit_recordings` holds one row per recorded connection: who, where, its state and size, and
the agent public key its chunks verify with. `audit_recording_chunks` holds each chunk's exact
signed bytes, zlib-compressed (asciicast text compresses several times over), with the SHA-256 of
the uncompressed bytes so a chunk the agent sends again is recognised without decompressing.
"""

from __future__ import annotations

import dataclasses
import zlib

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    LargeBinary,
    String,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mrzap.storage import Database, rowcount

__all__ = ["ChunkRecord", "RecordingQuery", "RecordingRecord", "RecordingStore"]

_ID = 64  # the width of id columns, as in audit_events


class _Base(DeclarativeBase):
    pass


class _RecordingRow(_Base):
    __tablename__ = "audit_recordings"
    connection_id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    target_id: Mapped[str] = mapped_column(String(_ID))
    user_id: Mapped[str] = mapped_column(String(_ID))
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(512))
    email: Mapped[str] = mapped_column(String(512))
    target_user: Mapped[str] = mapped_column(String(256))
    grant_id: Mapped[str] = mapped_column(String(_ID))
    input_recorded: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[float] = mapped_column(Float)
    end_time: Mapped[float] = mapped_column(Float)
    chunk_count: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    agent_public_key: Mapped[bytes] = mapped_column(LargeBinary)


class _ChunkRow(_Base):
    __tablename__ = "audit_recording_chunks"
    connection_id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[bytes] = mapped_column(LargeBinary)
    data: Mapped[bytes] = mapped_column(LargeBinary)


@dataclasses.dataclass(frozen=True)
class RecordingRecord:
    """One recording's metadata as stored."""

    connection_id: str
    target_id: str
    user_id: str
    """The service's id of the user, when it could be resolved from the header's subject."""
    issuer: str
    subject: str
    email: str
    target_user: str
    grant_id: str
    input_recorded: bool
    state: int
    """A `bastion.audit.v1.RecordingState` number."""
    start_time: float
    """When the session started (Unix seconds), from the signed header."""
    end_time: float
    """When the last chunk arrived (Unix seconds)."""
    chunk_count: int
    size_bytes: int
    """The chunks' signed bytes, uncompressed."""
    stored_bytes: int
    """What the chunks take in the database, compressed."""
    agent_public_key: bytes


@dataclasses.dataclass(frozen=True)
class ChunkRecord:
    """One chunk to store: its position, its exact signed bytes and their compressed form."""

    connection_id: str
    seq: int
    raw: bytes
    sha256: bytes
    compressed: bytes
    """`mrzap.recording.compress_chunk(raw)`, or what the agent sent in that format."""


@dataclasses.dataclass(frozen=True)
class RecordingQuery:
    """Which recordings to list; conditions combine with AND, empty ones match everything."""

    target_id: str = ""
    user_id: str = ""
    states: frozenset[int] = frozenset()
    owner: tuple[str, str] | None = None
    """Only recordings of this (issuer, subject): what a non-administrator may see."""


class RecordingStore:
    """Reads and writes the recording tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def database(self) -> Database:
        """The database (for a transaction spanning recordings and events)."""
        return self._db

    async def get(self, connection_id: str) -> RecordingRecord | None:
        """The recording of `connection_id`, if any."""
        async with self._db.session() as s:
            row = await s.get(_RecordingRow, connection_id)
            return None if row is None else _recording(row)

    async def chunks(self, connection_id: str, start_seq: int, limit: int) -> list[bytes]:
        """Up to `limit` chunks' exact bytes from `start_seq` on, in chain order."""
        statement = (
            select(_ChunkRow.data)
            .where(_ChunkRow.connection_id == connection_id, _ChunkRow.seq >= start_seq)
            .order_by(_ChunkRow.seq)
            .limit(limit)
        )
        async with self._db.session() as s:
            return [zlib.decompress(data) for data in await s.scalars(statement)]

    async def chunk_hash(self, connection_id: str, seq: int) -> bytes | None:
        """The SHA-256 of the stored chunk `seq`, if stored."""
        async with self._db.session() as s:
            return await s.scalar(
                select(_ChunkRow.sha256).where(
                    _ChunkRow.connection_id == connection_id, _ChunkRow.seq == seq
                )
            )

    async def add_chunk(
        self,
        session: AsyncSession,
        chunk: ChunkRecord,
        recording: RecordingRecord | None,
        *,
        final: bool,
        input_seen: bool,
        now: float,
    ) -> None:
        """Store a chunk in `session`'s transaction; `recording` is the new row for seq 0."""
        data = chunk.compressed
        session.add(
            _ChunkRow(
                connection_id=chunk.connection_id, seq=chunk.seq, sha256=chunk.sha256, data=data
            )
        )
        if recording is not None:
            session.add(_RecordingRow(**dataclasses.asdict(recording)))
            await session.flush()
        values: dict[str, object] = {
            "chunk_count": chunk.seq + 1,
            "end_time": now,
            "size_bytes": _RecordingRow.size_bytes + len(chunk.raw),
            "stored_bytes": _RecordingRow.stored_bytes + len(data),
        }
        if final:
            values["state"] = _COMPLETE
        if input_seen:
            values["input_recorded"] = True
        await session.execute(
            update(_RecordingRow)
            .where(_RecordingRow.connection_id == chunk.connection_id)
            .values(**values)
        )

    async def set_state(
        self, connection_id: str, state: int, *, only_from: int | None = None
    ) -> bool:
        """Change a recording's state (to INCOMPLETE when its chain broke), if it is in state
        `only_from` (when given); whether it changed."""
        query = update(_RecordingRow).where(_RecordingRow.connection_id == connection_id)
        if only_from is not None:
            query = query.where(_RecordingRow.state == only_from)
        async with self._db.session() as s, s.begin():
            return rowcount(await s.execute(query.values(state=state))) == 1

    async def live_of_target(self, target_id: str) -> list[str]:
        """The connection ids of the target's LIVE recordings."""
        statement = select(_RecordingRow.connection_id).where(
            _RecordingRow.target_id == target_id, _RecordingRow.state == _LIVE
        )
        async with self._db.session() as s:
            return list(await s.scalars(statement))

    async def search(
        self, query: RecordingQuery, after: tuple[float, str] | None, limit: int
    ) -> list[RecordingRecord]:
        """Up to `limit` matching recordings, newest first, after the (start_time, id) cursor."""
        statement = select(_RecordingRow).order_by(
            _RecordingRow.start_time.desc(), _RecordingRow.connection_id.desc()
        )
        if query.target_id:
            statement = statement.where(_RecordingRow.target_id == query.target_id)
        if query.user_id:
            statement = statement.where(_RecordingRow.user_id == query.user_id)
        if query.states:
            statement = statement.where(_RecordingRow.state.in_(sorted(query.states)))
        if query.owner is not None:
            issuer, subject = query.owner
            statement = statement.where(
                _RecordingRow.issuer == issuer, _RecordingRow.subject == subject
            )
        if after is not None:
            start, connection_id = after
            statement = statement.where(
                (_RecordingRow.start_time < start)
                | (
                    (_RecordingRow.start_time == start)
                    & (_RecordingRow.connection_id < connection_id)
                )
            )
        async with self._db.session() as s:
            return [_recording(row) for row in await s.scalars(statement.limit(limit))]

    async def purge(self, ended_before: float) -> int:
        """Delete the recordings (and chunks) whose last chunk arrived before `ended_before`."""
        async with self._db.session() as s, s.begin():
            old = select(_RecordingRow.connection_id).where(_RecordingRow.end_time < ended_before)
            ids = list(await s.scalars(old))
            if not ids:
                return 0
            await s.execute(delete(_ChunkRow).where(_ChunkRow.connection_id.in_(ids)))
            await s.execute(delete(_RecordingRow).where(_RecordingRow.connection_id.in_(ids)))
            return len(ids)

    async def total_stored_bytes(self) -> int:
        """What every stored chunk takes, compressed (for tests and operators)."""
        async with self._db.session() as s:
            return int(
                await s.scalar(select(func.coalesce(func.sum(_RecordingRow.stored_bytes), 0))) or 0
            )


# bastion.audit.v1.RecordingState numbers, kept off the protobuf module here.
_LIVE = 1
_COMPLETE = 2


def _recording(row: _RecordingRow) -> RecordingRecord:
    return RecordingRecord(
        connection_id=row.connection_id,
        target_id=row.target_id,
        user_id=row.user_id,
        issuer=row.issuer,
        subject=row.subject,
        email=row.email,
        target_user=row.target_user,
        grant_id=row.grant_id,
        input_recorded=row.input_recorded,
        state=row.state,
        start_time=row.start_time,
        end_time=row.end_time,
        chunk_count=row.chunk_count,
        size_bytes=row.size_bytes,
        stored_bytes=row.stored_bytes,
        agent_public_key=row.agent_public_key,
    )
