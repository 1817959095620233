"""The broker's intake of recording chunks from agents' control streams (PROTOCOL.md section 8).

An agent sends each signed chunk as `ControlRequest.recording_chunk`, or compressed (the
agent's CPU, not the broker's, which every agent shares) as `compressed_recording_chunk`: then
the broker inflates it, within the limit on a chunk, and stores the agent's compressed bytes as
they are once the chunk inside has verified. Before anything is stored,
`RecordingIntake` checks it with `mrzap.recording.ChainVerifier` under the public key the target
registered with: signature, connection, sequence, hash chain, header and events. The chain of a
connection continues across agent reconnections and broker restarts: the first chunk of a
connection this process has not seen resumes the verifier by re-verifying the chunks already
stored. What verified is stored unchanged (`audit.Recordings`), commands included.

A chunk that fails is refused and logged (its fault, never its content), and its recording becomes
INCOMPLETE; the control stream stays up, since the agent's channels have nothing to do with it.
A chunk the agent sends again after a reconnection (it cannot know what arrived) is recognised by
its hash and skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable

from google.protobuf.message import DecodeError

from audit import RecordingRecord, Recordings, RecordingState
from auth import AuthStore
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.envelope import signed_hash
from mrzap.errors import MrzapError
from mrzap.keys import public_key_from_bytes
from mrzap.recording import MAX_SIGNED_CHUNK_BYTES, ChainVerifier, RecordingError, inflate_chunk
from mrzap.timestamps import from_timestamp

from ._connections import Connections
from ._directory import TargetDirectory

__all__ = ["RecordingIntake", "UserResolver", "recording_owner"]

_log = logging.getLogger("mrzap.broker.recordings")

#: The service's user id of a connection's recording, given the subject of its signed header;
#: "" if unknown (then only administrators see the recording).
UserResolver = Callable[[str, mrzap_pb2.Subject], Awaitable[str]]

#: Chains kept in memory; an evicted one is resumed from the store when its next chunk comes.
_MAX_CHAINS = 10_000
#: Stored chunks re-verified per query when a chain is resumed.
_RESUME_PAGE = 256
_MAX_ID = 64


async def _nobody(_connection_id: str, _subject: mrzap_pb2.Subject) -> str:
    return ""


def recording_owner(connections: Connections, users: AuthStore) -> UserResolver:
    """Whose recording it is: the user of the broker's connection record when its subject is
    the header's, else the user who logged in with that subject."""

    async def resolve(connection_id: str, subject: mrzap_pb2.Subject) -> str:
        record = await connections.get(connection_id)
        if record is not None and (record.subject_iss, record.subject_sub) == (
            subject.iss,
            subject.sub,
        ):
            return record.user_id
        user = await users.find_user(subject.email) if subject.email else None
        if user is not None and (user.issuer, user.subject) == (subject.iss, subject.sub):
            return user.id
        return ""

    return resolve


class _Refused(Exception):
    """A chunk that is not stored; the message says why, without its content."""


@dataclasses.dataclass
class _Chain:
    target_id: str
    verifier: ChainVerifier
    recording: RecordingRecord | None
    broken: bool = False


class RecordingIntake:
    """Verifies and stores the recording chunks of every agent of this broker."""

    def __init__(
        self,
        recordings: Recordings,
        directory: TargetDirectory,
        resolve_user: UserResolver | None = None,
    ) -> None:
        self._recordings = recordings
        self._directory = directory
        self.resolve_user = resolve_user or _nobody
        """Whose recording a new one is (settable once the broker's connection records exist)."""
        self._chains: dict[str, _Chain] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def receive(self, target_id: str, data: bytes, compressed: bool = False) -> bool:
        """Check and store one chunk from `target_id`'s agent (`data` is the exact signed bytes,
        or them `compressed` by the agent); False if it was refused.

        Never raises for a bad chunk: it is logged and the stream goes on.
        """
        try:
            if compressed:
                try:
                    raw = inflate_chunk(data)
                except RecordingError as error:
                    raise _Refused(error.detail) from None
            else:
                raw = data
            chunk = _peek(raw)
            lock = self._locks.get(chunk.connection_id)
            if lock is None:
                if len(self._locks) >= 2 * _MAX_CHAINS:
                    # Refused chunks leave locks without chains; drop those nobody holds.
                    for idle in [k for k, v in self._locks.items() if not v.locked()]:
                        del self._locks[idle]
                lock = self._locks[chunk.connection_id] = asyncio.Lock()
            async with lock:
                return await self._receive(target_id, raw, chunk, data if compressed else None)
        except _Refused as refused:
            _log.warning("refused a recording chunk from agent %s: %s", target_id, refused)
            return False
        except Exception as error:  # the store failed (a database error is no MrzapError)
            # The stream must not end for it: the agent's channels have nothing to do with it.
            _log.error("could not store a recording chunk from agent %s: %s", target_id, error)
            return False

    async def _receive(
        self,
        target_id: str,
        raw: bytes,
        chunk: mrzap_pb2.RecordingChunk,
        compressed: bytes | None,
    ) -> bool:
        connection_id = chunk.connection_id
        digest = signed_hash(raw)
        chain = self._chains.get(connection_id)
        if chain is None:
            # After a reconnection the agent resends its last chunks, often of recordings that
            # ended meanwhile: an identical stored chunk is skipped without resuming the chain.
            if await self._recordings.store.chunk_hash(connection_id, chunk.seq) == digest:
                return True
            chain = await self._resume(target_id, connection_id)
        if chain.target_id != target_id:
            raise _Refused(f"connection {connection_id} is recorded by another target")
        if chunk.seq < chain.verifier.chunk_count:
            stored = await self._recordings.store.chunk_hash(connection_id, chunk.seq)
            if stored == digest:
                return True  # sent again after a reconnection; already stored
            raise _Refused(
                f"chunk {chunk.seq} of connection {connection_id} differs from the one stored"
            )
        if chain.broken:
            raise _Refused(f"the recording of connection {connection_id} is already broken")
        try:
            verified = chain.verifier.add(raw)
            if verified.seq == 0:
                chain.recording = await self._new_recording(target_id, verified)
        except (RecordingError, _Refused) as error:
            chain.broken = True
            message = f"the recording of connection {connection_id} broke: {error}"
            await self._recordings.broken(connection_id, target_id, message)
            raise _Refused(message) from None
        assert chain.recording is not None
        try:
            await self._recordings.append(chain.recording, raw, digest, verified, compressed)
        except BaseException:
            # The verifier moved on but the chunk is not stored: resume from the store next time.
            self._chains.pop(connection_id, None)
            raise
        if verified.final:
            self._forget(connection_id)
        return True

    async def abandon(
        self, connection_ids: Iterable[str], why: str = "its agent restarted"
    ) -> None:
        """These connections ended with their agent process (see Connections
        .close_ended_by_restart): their live recordings can never complete."""
        for connection_id in connection_ids:
            self._forget(connection_id)
            if await self._recordings.abandoned(connection_id):
                _log.info("recording %s is incomplete: %s", connection_id, why)

    async def abandon_target(self, target_id: str) -> None:
        """The target was terminated (its agent offline past the cleanup timeout): none of its
        live recordings can complete any more, whether or not their connections are closed."""
        await self.abandon(
            await self._recordings.store.live_of_target(target_id), "its target was terminated"
        )

    def _forget(self, connection_id: str) -> None:
        self._chains.pop(connection_id, None)
        self._locks.pop(connection_id, None)

    async def _resume(self, target_id: str, connection_id: str) -> _Chain:
        """The chain of `connection_id`: new, or re-verified from the stored chunks."""
        recording = await self._recordings.get(connection_id)
        if recording is not None and recording.target_id != target_id:
            # Checked before anything is cached: another agent must not be able to break the
            # chain of a recording it does not make.
            raise _Refused(f"connection {connection_id} is recorded by another target")
        public_key = public_key_from_bytes(await self._directory.agent_public_key(target_id))
        chain = _Chain(target_id, ChainVerifier(public_key, connection_id), recording)
        if recording is not None:
            chain.broken = recording.state == RecordingState.INCOMPLETE
            try:
                while True:
                    stored = await self._recordings.store.chunks(
                        connection_id, chain.verifier.chunk_count, _RESUME_PAGE
                    )
                    for old in stored:
                        chain.verifier.add(old)
                    if len(stored) < _RESUME_PAGE:
                        break
            except RecordingError as error:
                _log.error(
                    "stored recording of connection %s does not verify: %s", connection_id, error
                )
                chain.broken = True
        if len(self._chains) >= _MAX_CHAINS:
            self._forget(next(iter(self._chains)))
        self._chains[connection_id] = chain
        return chain

    async def _new_recording(
        self, target_id: str, chunk: mrzap_pb2.RecordingChunk
    ) -> RecordingRecord:
        header = chunk.header
        if header.target_id != target_id:
            raise _Refused("the recording header names another target than the agent's")
        public_key = await self._directory.agent_public_key(target_id)
        try:
            user_id = await self.resolve_user(chunk.connection_id, header.subject)
        except MrzapError as error:
            _log.warning("could not tell whose recording %s is: %s", chunk.connection_id, error)
            user_id = ""
        started = from_timestamp(header.started_at)
        return RecordingRecord(
            connection_id=chunk.connection_id,
            target_id=target_id,
            user_id=user_id,
            issuer=header.subject.iss,
            subject=header.subject.sub,
            email=header.subject.email,
            target_user=header.target_user,
            grant_id=header.grant_id,
            input_recorded=False,
            state=RecordingState.LIVE,
            start_time=started,
            end_time=started,
            chunk_count=0,
            size_bytes=0,
            stored_bytes=0,
            agent_public_key=public_key,
        )


def _peek(raw: bytes) -> mrzap_pb2.RecordingChunk:
    """The chunk inside, unverified: only to find its chain, which then verifies it."""
    if len(raw) > MAX_SIGNED_CHUNK_BYTES:
        raise _Refused(f"a chunk of {len(raw)} bytes is too large")
    try:
        chunk = mrzap_pb2.RecordingChunk.FromString(mrzap_pb2.Signed.FromString(raw).payload)
    except DecodeError:
        raise _Refused("not a signed recording chunk") from None
    if not chunk.connection_id or len(chunk.connection_id) > _MAX_ID:
        raise _Refused("the chunk names no valid connection id")
    return chunk
