"""Checking a recording's chunks before showing them, and replaying its output with its timing.

zli trusts a recording only after every chunk has verified under the agent's key (PROTOCOL.md
section 8): the service stores and relays chunks but cannot forge, drop or reorder them unseen. A
failure names the `RecordingFault` and the chunk where the chain broke.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from bastion.mrzap.v1 import mrzap_pb2
from mrzap.envelope import parse_signed
from mrzap.errors import InvalidArgument, MrzapError
from mrzap.keys import public_key_bytes, public_key_from_bytes
from mrzap.recording import (
    RecordingError,
    RecordingFault,
    VerifiedRecording,
    verify_recording,
)

__all__ = [
    "VerificationFailed",
    "agent_key",
    "key_fingerprint",
    "output_delays",
    "play",
    "unverified_events",
    "verify_chunks",
]


class VerificationFailed(InvalidArgument):
    """A recording failed verification: which check (`fault`), at which chunk, and why."""

    def __init__(
        self, connection_id: str, fault: RecordingFault, chunk: int | None, detail: str
    ) -> None:
        where = f" at chunk {chunk}" if chunk is not None else ""
        super().__init__(
            f"recording {connection_id} FAILED verification: {fault.value}{where}: {detail}"
        )
        self.fault = fault
        self.chunk = chunk


def agent_key(raw: bytes, pinned: str = "") -> Ed25519PublicKey:
    """The key to verify with: the service's `raw` key, which must equal `pinned` if one is given.

    `pinned` (base64 of the raw 32-byte key, as `zli targets show` prints it) lets a careful
    viewer refuse a service that would swap in a key of its own next to forged chunks.
    """
    if pinned:
        try:
            expected = base64.b64decode(pinned.strip(), validate=True)
        except ValueError:
            raise InvalidArgument("--key must be the agent's public key in base64") from None
        if raw and raw != expected:
            raise InvalidArgument(
                "the recording's agent key is not the key given with --key: refusing to trust it"
            )
        raw = expected
    if not raw:
        raise InvalidArgument("the recording comes without the agent's public key to verify with")
    return public_key_from_bytes(raw)


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """A short fingerprint of an agent key to compare with the target's registered key."""
    digest = hashlib.sha256(public_key_bytes(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def verify_chunks(
    chunks: Iterable[bytes], key: Ed25519PublicKey, connection_id: str
) -> VerifiedRecording:
    """Verify a whole recording of `connection_id`; VerificationFailed names the failing chunk.

    An incomplete chain (a live session, or one cut short) verifies; `complete` says which.
    """
    consumed = 0

    def counted() -> Iterator[bytes]:
        nonlocal consumed
        for raw in chunks:
            consumed += 1
            yield raw

    try:
        recording = verify_recording(counted(), key)
    except RecordingError as error:
        chunk = consumed - 1 if consumed and error.fault is not RecordingFault.EMPTY else None
        raise VerificationFailed(connection_id, error.fault, chunk, error.detail) from None
    if connection_id and recording.connection_id != connection_id:
        # Chunks signed for another session of the same agent, served under this one's id.
        raise VerificationFailed(
            connection_id,
            RecordingFault.WRONG_CONNECTION,
            0,
            f"the chunks belong to connection {recording.connection_id!r}",
        )
    return recording


def unverified_events(chunks: Iterable[bytes]) -> list[mrzap_pb2.RecordingEvent]:
    """The events of every chunk that parses, unchecked (`--no-verify`: for forensics only)."""
    events: list[mrzap_pb2.RecordingEvent] = []
    for raw in chunks:
        try:
            chunk = mrzap_pb2.RecordingChunk.FromString(parse_signed(raw).payload)
        except (DecodeError, MrzapError):
            continue  # the point of --no-verify is to show what can still be read
        events.extend(chunk.events)
    return events


def output_delays(
    events: Iterable[mrzap_pb2.RecordingEvent], speed: float, idle_limit: float | None
) -> Iterator[tuple[float, str]]:
    """(seconds to wait before, text) for each output event, at `speed` with pauses capped.

    Only output is played: input events echo through the output anyway, and resizes cannot be
    applied to the viewer's terminal.
    """
    previous = 0.0
    for event in events:
        if event.code != "o":
            continue
        gap = max(event.time - previous, 0.0)
        previous = event.time
        if idle_limit is not None:
            gap = min(gap, idle_limit)
        yield gap / speed, event.data


def play(
    events: Iterable[mrzap_pb2.RecordingEvent],
    write: Callable[[str], None],
    sleep: Callable[[float], None],
    *,
    speed: float = 1.0,
    idle_limit: float | None = None,
) -> None:
    """Write the output events with their timing."""
    for delay, data in output_delays(events, speed, idle_limit):
        if delay > 0:
            sleep(delay)
        write(data)
