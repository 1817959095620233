"""Signed recording chunks stay well inside the broker's control-stream message limit.

The agent sends each chunk as one ControlRequest; the broker ends a stream whose message is larger
than BrokerConfig.max_message_bytes. The recorder's chunk size is raised for throughput
(agent/_recorder.py DEFAULT_CHUNK_BYTES), so the worst cases are checked here: output that is all
invalid UTF-8 (each byte becomes a 3-byte U+FFFD), many tiny events (framing overhead), and the
longest commands the command log keeps, in the first chunk (which carries the header).
"""

from __future__ import annotations

import pytest

from agent._commands import MAX_COMMAND_CHARS, TypedCommand
from agent._recorder import MAX_CHUNK_BYTES, RecorderLimits, SessionRecorder
from bastion.agent.v1 import agent_service_pb2 as agent_pb
from bastion.mrzap.v1 import mrzap_pb2
from broker._config import BrokerConfig
from mrzap import keys
from mrzap.errors import InvalidArgument
from mrzap.recording import MAX_SIGNED_CHUNK_BYTES, ChainSigner, verify_recording

AGENT_KEY = keys.generate_signing_key()
HEADER = mrzap_pb2.RecordingHeader(
    width=80, height=24, target_id="t" * 64, target_user="u" * 32, grant_id="g" * 64
)
EVERYTHING = mrzap_pb2.RecordSettings(output=True, input=True)
#: What a chunk may take of the broker's default limit: the rest is headroom.
BROKER_LIMIT: int = BrokerConfig.__dataclass_fields__["max_message_bytes"].default  # type: ignore[assignment]
HEADROOM = 48 * 1024


def as_control_request(chunk: bytes) -> int:
    return agent_pb.ControlRequest(recording_chunk=chunk).ByteSize()


def worst_cases(limits: RecorderLimits) -> list[bytes]:
    now = 1000.0
    session = SessionRecorder(ChainSigner(AGENT_KEY, "c" * 36, HEADER), EVERYTHING, now, limits)
    chunks: list[bytes] = []
    longest = "\u0800" * MAX_COMMAND_CHARS  # three UTF-8 bytes each
    chunks += session.commands([TypedCommand(0.0, longest)] * 8, now)
    chunks += session.output(b"\xff" * (4 * limits.max_chunk_bytes), now)
    for _ in range(limits.max_chunk_bytes // 8):
        chunks += session.output(b"x", now)
        chunks += session.input(b"y", now)
    chunks += session.close(now)
    return chunks


@pytest.mark.parametrize("chunk_bytes", [RecorderLimits().max_chunk_bytes, MAX_CHUNK_BYTES])
def test_every_signed_chunk_fits_the_broker_limit_with_room_to_spare(chunk_bytes: int) -> None:
    chunks = worst_cases(RecorderLimits(max_chunk_bytes=chunk_bytes))
    largest = max(as_control_request(chunk) for chunk in chunks)
    assert largest <= BROKER_LIMIT - HEADROOM
    assert largest <= MAX_SIGNED_CHUNK_BYTES
    verify_recording(chunks, AGENT_KEY.public_key(), require_complete=True)


def test_the_default_chunk_is_larger_than_before_for_throughput() -> None:
    assert RecorderLimits().max_chunk_bytes == 160 * 1024


def test_a_chunk_size_past_the_bound_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="at most"):
        RecorderLimits(max_chunk_bytes=MAX_CHUNK_BYTES + 1)
