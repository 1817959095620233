"""Session recordings in the audit role: verified chunks, their commands, live wake-ups, retention.

The broker verifies each chunk an agent sends (`broker/_recordings.py`) and hands it here:
`Recordings.append` stores the exact signed bytes (compressed) and, in the same transaction, an
audit COMMAND event for every command the chunk carries, so the command log and the recording
never disagree. Watchers of a live recording are woken in-process at once; other processes find
new chunks by polling the store.

`RecordingPurger` deletes recordings whose last chunk is older than the retention period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from collections.abc import Iterable

from bastion.audit.v1 import audit_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.clock import Clock, SystemClock
from mrzap.errors import InvalidArgument
from mrzap.periodic import Periodic
from mrzap.recording import compress_chunk_async
from mrzap.timestamps import to_timestamp

from ._log import AuditLog, Outcome
from ._recording_store import ChunkRecord, RecordingRecord, RecordingStore

__all__ = ["AuditConfig", "RecordingPurger", "RecordingState", "Recordings"]

_log = logging.getLogger("mrzap.audit.recordings")


class RecordingState(enum.IntEnum):
    """Whether a recording still grows and whether it is whole (values are the wire numbers)."""

    LIVE = pb.RECORDING_STATE_LIVE
    COMPLETE = pb.RECORDING_STATE_COMPLETE
    INCOMPLETE = pb.RECORDING_STATE_INCOMPLETE


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """The audit role's settings (the `[audit]` section of mrzapd's configuration)."""

    recording_retention_s: float = 90 * 86400.0
    """Recordings whose last chunk is older than this are deleted."""

    purge_interval_s: float = 3600.0
    """How often expired recordings are looked for."""

    def __post_init__(self) -> None:
        if self.recording_retention_s <= 0:
            raise InvalidArgument("audit.recording_retention must be positive")
        if self.purge_interval_s <= 0:
            raise InvalidArgument("audit.purge_interval must be positive")


class Recordings:
    """The stored recordings, with in-process wake-ups for live viewers."""

    def __init__(self, store: RecordingStore, log: AuditLog, clock: Clock | None = None) -> None:
        self.store = store
        """The tables."""
        self._log = log
        self._clock = clock or SystemClock()
        self._waiters: dict[str, set[asyncio.Event]] = {}

    async def get(self, connection_id: str) -> RecordingRecord | None:
        """The recording of `connection_id`, if stored."""
        return await self.store.get(connection_id)

    async def append(
        self,
        recording: RecordingRecord,
        raw: bytes,
        sha256: bytes,
        chunk: mrzap_pb2.RecordingChunk,
        compressed: bytes | None = None,
    ) -> None:
        """Store a verified chunk of `recording` (whose row is created with chunk 0) and its
        commands as COMMAND events, in one transaction; then wake the recording's watchers.

        `compressed` is `raw` as the agent compressed it (`mrzap.recording.inflate_chunk` gave
        `raw`); without it the chunk is compressed here."""
        now = self._clock.now()
        if compressed is None:
            compressed = await compress_chunk_async(raw)
        async with self.store.database.session() as s, s.begin():
            await self.store.add_chunk(
                s,
                ChunkRecord(chunk.connection_id, chunk.seq, raw, sha256, compressed),
                recording if chunk.seq == 0 else None,
                final=chunk.final,
                input_seen=any(event.code == "i" for event in chunk.events),
                now=now,
            )
            for event in _command_events(recording, chunk):
                await self._log.record(event, session=s)
        self.wake(chunk.connection_id)

    async def broken(self, connection_id: str, target_id: str, message: str) -> None:
        """The recording's chain broke (a chunk failed its checks): it can no longer complete,
        and administrators find why in the audit log (a denied TARGET event; `message` must
        hold the fault, never the chunk's content)."""
        await self.store.set_state(connection_id, RecordingState.INCOMPLETE)
        await self._log.record_target(target_id, 0, message, outcome=Outcome.DENIED)
        self.wake(connection_id)

    async def abandoned(self, connection_id: str) -> bool:
        """The connection ended with its agent process: no more chunks can come, so a LIVE
        recording becomes INCOMPLETE (a complete one stays as it is). Whether it changed."""
        changed = await self.store.set_state(
            connection_id, RecordingState.INCOMPLETE, only_from=RecordingState.LIVE
        )
        if changed:
            self.wake(connection_id)
        return changed

    def wake(self, connection_id: str) -> None:
        """Tell this process's watchers of `connection_id` that something changed."""
        for event in self._waiters.get(connection_id, ()):
            event.set()

    async def wait(self, connection_id: str, timeout_s: float) -> None:
        """Return when `connection_id` changes in this process, or after `timeout_s` (another
        process may have stored chunks, so callers poll the store after either)."""
        event = asyncio.Event()
        waiters = self._waiters.setdefault(connection_id, set())
        waiters.add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        finally:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(connection_id, None)


def _command_events(
    recording: RecordingRecord, chunk: mrzap_pb2.RecordingChunk
) -> Iterable[pb.AuditEvent]:
    for command in chunk.commands:
        yield pb.AuditEvent(
            time=to_timestamp(recording.start_time + command.time),
            kind=pb.EVENT_KIND_COMMAND,
            outcome=pb.EVENT_OUTCOME_ALLOWED,
            actor=pb.Actor(
                user_id=recording.user_id,
                subject=mrzap_pb2.Subject(
                    iss=recording.issuer, sub=recording.subject, email=recording.email
                ),
                target_id=recording.target_id,
            ),
            command=pb.CommandDetails(
                connection_id=recording.connection_id,
                target_id=recording.target_id,
                target_user=recording.target_user,
                command=command.command,
                chunk_seq=chunk.seq,
            ),
        )


class RecordingPurger:
    """Deletes expired recordings periodically (the audit role's timer)."""

    def __init__(
        self, recordings: Recordings, config: AuditConfig, clock: Clock | None = None
    ) -> None:
        self._recordings = recordings
        self._config = config
        self._clock = clock or SystemClock()
        # The database may be away for a while; the next round retries.
        self._timer = Periodic(
            "audit-recording-purge",
            self.purge_once,
            config.purge_interval_s,
            log=_log,
            failed="purging expired recordings failed",
        )

    async def purge_once(self) -> int:
        """Delete every recording past the retention period now; how many."""
        cutoff = self._clock.now() - self._config.recording_retention_s
        deleted = await self._recordings.store.purge(cutoff)
        if deleted:
            _log.info("deleted %d recordings older than the retention period", deleted)
        return deleted

    def start(self) -> None:
        """Purge now and then every `purge_interval_s`; call from the running loop."""
        self._timer.start()

    async def stop(self) -> None:
        """Stop purging."""
        await self._timer.stop()
