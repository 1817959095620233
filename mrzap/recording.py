"""Tamper-evident session recordings: signed, hash-chained chunks (PROTOCOL.md section 8).

The agent cuts a session into `RecordingChunk`s, each signed with the agent key in a Signed
envelope of domain `mrzap/v1/recording`. Chunk `n` carries `prev_hash` = SHA-256 of the exact
serialized Signed bytes of chunk `n - 1`; the first chunk (seq 0) has an empty `prev_hash` and is
the only one carrying the `RecordingHeader`. The last chunk is marked `final`.

Anyone holding the agent's public key can check a recording offline: every signature, the chain,
the sequence (no gap, repeat or reordering), a single connection id, the header and the events. Each
failure has a stable `RecordingFault`, so zli, the broker and tests name the same check.

`ChainSigner` builds chunks (agent), `ChainVerifier` checks them one by one as they arrive (broker,
live viewers), `verify_recording` checks a whole stored recording, and `asciicast_lines` turns a
verified recording into an asciicast v2 file that asciinema plays.

Chunks travel and are stored compressed: `compress_chunk` (the agent) and `inflate_chunk` (the
broker, bounded by MAX_SIGNED_CHUNK_BYTES since the bytes come from the network) are the one
format for both, so the broker can store what an agent sent without compressing it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import math
import re
import zlib
from collections.abc import Iterable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from bastion.mrzap.v1 import mrzap_pb2

from .envelope import Domain, sign, signed_hash, verify_signature
from .errors import InvalidArgument
from .timestamps import from_timestamp, to_timestamp
from .verification import VerificationError

__all__ = [
    "EVENT_CODES",
    "FIRST_PREV_HASH",
    "MAX_SIGNED_CHUNK_BYTES",
    "ChainSigner",
    "ChainVerifier",
    "RecordingError",
    "RecordingFault",
    "VerifiedRecording",
    "asciicast_event_line",
    "asciicast_header_line",
    "asciicast_lines",
    "compress_chunk",
    "compress_chunk_async",
    "inflate_chunk",
    "recording_header",
    "verify_recording",
]

FIRST_PREV_HASH = b""
"""The `prev_hash` of the chunk with seq 0: empty, as the wire contract says."""

MAX_SIGNED_CHUNK_BYTES = 1024 * 1024
"""The largest serialized Signed chunk a verifier accepts; agents cut chunks far smaller."""

EVENT_CODES = frozenset({"o", "i", "r"})
"""The asciicast v2 event codes a recording may hold: output, input, resize."""

_RESIZE_DATA = re.compile(r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}")
_DEFAULT_WIDTH, _DEFAULT_HEIGHT = 80, 24


class RecordingFault(enum.Enum):
    """Which check of a recording failed. The values are stable and safe to show or store."""

    MALFORMED = "MALFORMED"
    """A chunk is not a Signed envelope, or its payload is not a RecordingChunk."""
    TOO_LARGE = "TOO_LARGE"
    """A chunk is larger than MAX_SIGNED_CHUNK_BYTES."""
    BAD_SIGNATURE = "BAD_SIGNATURE"
    """A chunk's signature does not verify under the agent key for the recording domain."""
    WRONG_CONNECTION = "WRONG_CONNECTION"
    """A chunk names another connection than the recording's."""
    OUT_OF_SEQUENCE = "OUT_OF_SEQUENCE"
    """A chunk's seq is not the next one: a chunk was dropped, repeated or reordered."""
    BROKEN_CHAIN = "BROKEN_CHAIN"
    """A chunk's prev_hash is not the hash of the chunk before it."""
    BAD_HEADER = "BAD_HEADER"
    """The first chunk lacks the header, or a later chunk carries one."""
    BAD_EVENT = "BAD_EVENT"
    """An event has an unknown code, a bad time (negative, not finite, going back) or bad data."""
    AFTER_FINAL = "AFTER_FINAL"
    """A chunk follows the one marked final."""
    EMPTY = "EMPTY"
    """The recording has no chunk at all."""
    INCOMPLETE = "INCOMPLETE"
    """The recording has no final chunk (only a fault when a complete recording is required)."""


class RecordingError(InvalidArgument):
    """A recording failed a check; `fault` says which one, `detail` says where in words."""

    def __init__(self, fault: RecordingFault, detail: str) -> None:
        super().__init__(f"recording {fault.value}: {detail}")
        self.fault = fault
        self.detail = detail


def compress_chunk(raw: bytes) -> bytes:
    """A signed chunk's bytes as one zlib stream. Level 1: several times smaller for terminal
    text already, at about twice the speed of the default level."""
    return zlib.compress(raw, 1)


#: Chunks up to this size are compressed on the event loop (a thread hop would cost more).
_INLINE_COMPRESS_BYTES = 4096


async def compress_chunk_async(raw: bytes) -> bytes:
    """`compress_chunk`, in a thread for a large chunk: that takes milliseconds, and zlib
    releases the GIL, so the event loop (every other channel) goes on meanwhile."""
    if len(raw) > _INLINE_COMPRESS_BYTES:
        return await asyncio.to_thread(compress_chunk, raw)
    return compress_chunk(raw)


def inflate_chunk(compressed: bytes) -> bytes:
    """The signed chunk inside `compressed`, which must be one whole zlib stream and nothing
    more; raises RecordingError (MALFORMED, or TOO_LARGE past MAX_SIGNED_CHUNK_BYTES, found
    without inflating further)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, MAX_SIGNED_CHUNK_BYTES + 1)
    except zlib.error:
        raise RecordingError(RecordingFault.MALFORMED, "a compressed chunk is not zlib") from None
    if len(raw) > MAX_SIGNED_CHUNK_BYTES:
        raise RecordingError(
            RecordingFault.TOO_LARGE,
            f"a compressed chunk holds more than {MAX_SIGNED_CHUNK_BYTES} bytes",
        )
    if not inflater.eof or inflater.unused_data:
        raise RecordingError(
            RecordingFault.MALFORMED, "a compressed chunk is not exactly one whole zlib stream"
        )
    return raw


def recording_header(
    grant: mrzap_pb2.Grant, width: int, height: int, started_at: float
) -> mrzap_pb2.RecordingHeader:
    """The header of a session run under `grant`, on a `width` x `height` terminal.

    `started_at` is wall-clock seconds since the Unix epoch.
    """
    return mrzap_pb2.RecordingHeader(
        width=width,
        height=height,
        started_at=to_timestamp(started_at),
        grant_id=grant.grant_id,
        target_id=grant.target_id,
        target_user=grant.target_user,
        subject=grant.subject,
    )


@dataclasses.dataclass
class ChainSigner:
    """Signs the chunks of one connection's recording in chain order (agent side).

    Each call to `sign_chunk` returns the exact bytes to send and store; they are the bytes the
    next chunk's `prev_hash` commits to, so they must never be re-serialized.
    """

    key: Ed25519PrivateKey
    """The agent key."""

    connection_id: str
    """The recorded connection."""

    header: mrzap_pb2.RecordingHeader
    """Carried by the first chunk only."""

    _next_seq: int = 0
    _prev_hash: bytes = FIRST_PREV_HASH
    _finished: bool = False

    @property
    def next_seq(self) -> int:
        """The seq the next chunk will carry."""
        return self._next_seq

    @property
    def finished(self) -> bool:
        """Whether the final chunk has been signed."""
        return self._finished

    def sign_chunk(
        self,
        events: Iterable[mrzap_pb2.RecordingEvent] = (),
        commands: Iterable[mrzap_pb2.CommandRecord] = (),
        *,
        final: bool = False,
    ) -> bytes:
        """The serialized Signed envelope of the next chunk."""
        if self._finished:
            raise RecordingError(RecordingFault.AFTER_FINAL, "the recording is already final")
        chunk = mrzap_pb2.RecordingChunk(
            connection_id=self.connection_id,
            seq=self._next_seq,
            prev_hash=self._prev_hash,
            events=events,
            commands=commands,
            final=final,
        )
        if self._next_seq == 0:
            chunk.header.CopyFrom(self.header)
        raw = sign(self.key, Domain.RECORDING, chunk.SerializeToString()).SerializeToString()
        self._prev_hash = signed_hash(raw)
        self._next_seq += 1
        self._finished = final
        return raw


@dataclasses.dataclass
class ChainVerifier:
    """Checks a recording's chunks one at a time, in the order they must come.

    Used where chunks arrive live (the broker before storing, a viewer while watching) and by
    `verify_recording`. After the first failure the verifier refuses everything: a chain broken
    once cannot be trusted again.
    """

    public_key: Ed25519PublicKey
    """The agent's registered public key."""

    connection_id: str | None = None
    """The expected connection; None takes the first chunk's."""

    header: mrzap_pb2.RecordingHeader | None = dataclasses.field(default=None, init=False)
    """The header, once the first chunk has verified."""

    chunk_count: int = dataclasses.field(default=0, init=False)
    """How many chunks have verified."""

    finished: bool = dataclasses.field(default=False, init=False)
    """Whether the final chunk has verified."""

    _prev_hash: bytes = FIRST_PREV_HASH
    _last_time: float = 0.0
    _broken: RecordingError | None = None

    def add(self, raw: bytes) -> mrzap_pb2.RecordingChunk:
        """Verify the next chunk's exact bytes and return it parsed."""
        if self._broken is not None:
            raise self._broken
        try:
            chunk = self._check(raw)
        except RecordingError as error:
            self._broken = error
            raise
        self._prev_hash = signed_hash(raw)
        self.chunk_count += 1
        self.finished = chunk.final
        return chunk

    def _check(self, raw: bytes) -> mrzap_pb2.RecordingChunk:
        seq = self.chunk_count
        if self.finished:
            raise RecordingError(RecordingFault.AFTER_FINAL, f"chunk {seq} follows the final one")
        if len(raw) > MAX_SIGNED_CHUNK_BYTES:
            raise RecordingError(RecordingFault.TOO_LARGE, f"chunk {seq} is {len(raw)} bytes")
        chunk = self._open(raw, seq)
        if self.connection_id is None:
            self.connection_id = chunk.connection_id
        if chunk.connection_id != self.connection_id:
            raise RecordingError(
                RecordingFault.WRONG_CONNECTION,
                f"chunk {seq} belongs to connection {chunk.connection_id!r}",
            )
        if chunk.seq != seq:
            raise RecordingError(
                RecordingFault.OUT_OF_SEQUENCE, f"expected chunk {seq}, got chunk {chunk.seq}"
            )
        if chunk.prev_hash != self._prev_hash:
            raise RecordingError(
                RecordingFault.BROKEN_CHAIN, f"chunk {seq} does not follow the chunk before it"
            )
        if chunk.HasField("header") != (seq == 0):
            where = "the first chunk lacks" if seq == 0 else f"chunk {seq} carries"
            raise RecordingError(RecordingFault.BAD_HEADER, f"{where} the header")
        self._check_events(chunk, seq)
        if seq == 0:
            self.header = chunk.header
        return chunk

    def _open(self, raw: bytes, seq: int) -> mrzap_pb2.RecordingChunk:
        try:
            signed = mrzap_pb2.Signed.FromString(raw)
        except DecodeError:
            raise RecordingError(
                RecordingFault.MALFORMED, f"chunk {seq} is not a signed envelope"
            ) from None
        try:
            payload = verify_signature(signed, self.public_key, Domain.RECORDING)
        except VerificationError:
            raise RecordingError(
                RecordingFault.BAD_SIGNATURE, f"chunk {seq} is not signed by the agent"
            ) from None
        try:
            return mrzap_pb2.RecordingChunk.FromString(payload)
        except DecodeError:
            # Only a broken agent signs garbage, but the verifier must still say so clearly.
            raise RecordingError(
                RecordingFault.MALFORMED, f"chunk {seq} does not hold a recording chunk"
            ) from None

    def _check_events(self, chunk: mrzap_pb2.RecordingChunk, seq: int) -> None:
        # asciinema plays events in file order, so time must never go back across the chain.
        for event in chunk.events:
            if event.code not in EVENT_CODES:
                raise RecordingError(
                    RecordingFault.BAD_EVENT, f"chunk {seq} has event code {event.code!r}"
                )
            if not math.isfinite(event.time) or event.time < self._last_time:
                raise RecordingError(
                    RecordingFault.BAD_EVENT, f"chunk {seq} has an event at time {event.time}"
                )
            if event.code == "r" and not _RESIZE_DATA.fullmatch(event.data):
                raise RecordingError(
                    RecordingFault.BAD_EVENT, f"chunk {seq} has a resize to {event.data!r}"
                )
            self._last_time = event.time
        for command in chunk.commands:
            if not math.isfinite(command.time) or command.time < 0:
                raise RecordingError(
                    RecordingFault.BAD_EVENT, f"chunk {seq} has a command at time {command.time}"
                )


@dataclasses.dataclass(frozen=True)
class VerifiedRecording:
    """A recording whose every chunk verified, with its content in order."""

    connection_id: str
    """The recorded connection."""

    header: mrzap_pb2.RecordingHeader
    """The header of the first chunk."""

    events: tuple[mrzap_pb2.RecordingEvent, ...]
    """The asciicast events of all chunks, in order."""

    commands: tuple[tuple[int, mrzap_pb2.CommandRecord], ...]
    """The commands typed, each with the seq of the chunk that carries it signed."""

    chunk_count: int
    """How many chunks the chain has."""

    complete: bool
    """Whether the chain ends with a final chunk; a recording still running or cut short is not."""


def verify_recording(
    chunks: Iterable[bytes], public_key: Ed25519PublicKey, *, require_complete: bool = False
) -> VerifiedRecording:
    """Verify a whole recording from its chunks' exact bytes, in chain order.

    A chain without its final chunk verifies as incomplete (a live or cut-short session), unless
    `require_complete`, when it is an INCOMPLETE fault. Raises RecordingError at the first fault.
    """
    verifier = ChainVerifier(public_key)
    events: list[mrzap_pb2.RecordingEvent] = []
    commands: list[tuple[int, mrzap_pb2.CommandRecord]] = []
    for raw in chunks:
        chunk = verifier.add(raw)
        events.extend(chunk.events)
        commands.extend((chunk.seq, command) for command in chunk.commands)
    if verifier.header is None or verifier.connection_id is None:
        raise RecordingError(RecordingFault.EMPTY, "the recording has no chunks")
    if require_complete and not verifier.finished:
        raise RecordingError(
            RecordingFault.INCOMPLETE,
            f"the recording ends after chunk {verifier.chunk_count - 1} without a final chunk",
        )
    return VerifiedRecording(
        connection_id=verifier.connection_id,
        header=verifier.header,
        events=tuple(events),
        commands=tuple(commands),
        chunk_count=verifier.chunk_count,
        complete=verifier.finished,
    )


def asciicast_header_line(header: mrzap_pb2.RecordingHeader) -> str:
    """The first line of an asciicast v2 file for a recording with `header`."""
    document: dict[str, object] = {
        "version": 2,
        "width": header.width or _DEFAULT_WIDTH,
        "height": header.height or _DEFAULT_HEIGHT,
    }
    if header.HasField("started_at"):
        document["timestamp"] = int(from_timestamp(header.started_at))
    if header.target_user or header.target_id:
        document["title"] = f"{header.target_user}@{header.target_id}"
    return json.dumps(document, ensure_ascii=False)


def asciicast_event_line(event: mrzap_pb2.RecordingEvent) -> str:
    """One asciicast v2 event line: `[time, code, data]`."""
    return json.dumps([round(event.time, 6), event.code, event.data], ensure_ascii=False)


def asciicast_lines(recording: VerifiedRecording) -> Iterator[str]:
    """The lines (without newlines) of the asciicast v2 file of a verified recording."""
    yield asciicast_header_line(recording.header)
    for event in recording.events:
        yield asciicast_event_line(event)
