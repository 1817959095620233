"""Signed, hash-chained recordings (PROTOCOL.md section 8) and their asciicast v2 export.

Chunks are signed with real Ed25519 keys; each check of the offline verifier has a test that names
its fault, property tests show that any flipped byte, dropped, repeated or reordered chunk is
caught, and the export is played by the real asciinema program.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.envelope import Domain, sign, signed_hash
from mrzap.recording import (
    FIRST_PREV_HASH,
    MAX_SIGNED_CHUNK_BYTES,
    ChainSigner,
    ChainVerifier,
    RecordingError,
    RecordingFault,
    asciicast_lines,
    compress_chunk,
    inflate_chunk,
    recording_header,
    verify_recording,
)
from mrzap.timestamps import to_timestamp

AGENT_KEY = keys.generate_signing_key()
AGENT_PUBLIC = AGENT_KEY.public_key()
HEADER = mrzap_pb2.RecordingHeader(
    width=100,
    height=30,
    started_at=to_timestamp(1_700_000_000.5),
    grant_id="grant-1",
    target_id="web-1",
    target_user="alice",
    subject=mrzap_pb2.Subject(iss="https://idp", sub="u1", email="alice@example.com"),
)


def out(time: float, data: str, code: str = "o") -> mrzap_pb2.RecordingEvent:
    return mrzap_pb2.RecordingEvent(time=time, code=code, data=data)


def make_chain(count: int, connection_id: str = "conn-1", *, final: bool = True) -> list[bytes]:
    """`count` chunks of one connection, one output event each; the last one final if asked."""
    signer = ChainSigner(AGENT_KEY, connection_id, HEADER)
    return [
        signer.sign_chunk([out(float(seq), f"line {seq}\r\n")], final=final and seq == count - 1)
        for seq in range(count)
    ]


def sign_raw(chunk: mrzap_pb2.RecordingChunk) -> bytes:
    return sign(AGENT_KEY, Domain.RECORDING, chunk.SerializeToString()).SerializeToString()


def fault_of(chunks: list[bytes], *, require_complete: bool = False) -> RecordingFault:
    with pytest.raises(RecordingError) as caught:
        verify_recording(chunks, AGENT_PUBLIC, require_complete=require_complete)
    return caught.value.fault


def test_a_signed_chain_verifies_with_its_content_in_order() -> None:
    signer = ChainSigner(AGENT_KEY, "conn-1", HEADER)
    first = signer.sign_chunk(
        [out(0.1, "$ "), out(0.5, "ls\r", "i"), out(0.6, "120x40", "r")],
        [mrzap_pb2.CommandRecord(time=0.5, command="ls")],
    )
    last = signer.sign_chunk([out(1.0, "a  b\r\n")], final=True)

    recording = verify_recording([first, last], AGENT_PUBLIC, require_complete=True)

    assert recording.connection_id == "conn-1"
    assert recording.header == HEADER
    assert [e.data for e in recording.events] == ["$ ", "ls\r", "120x40", "a  b\r\n"]
    assert [(seq, c.command) for seq, c in recording.commands] == [(0, "ls")]
    assert recording.chunk_count == 2
    assert recording.complete


def test_the_chain_links_exact_signed_bytes_and_starts_empty() -> None:
    chunks = make_chain(3)
    parsed = [
        mrzap_pb2.RecordingChunk.FromString(mrzap_pb2.Signed.FromString(raw).payload)
        for raw in chunks
    ]
    assert parsed[0].prev_hash == FIRST_PREV_HASH == b""
    assert parsed[1].prev_hash == signed_hash(chunks[0])
    assert parsed[2].prev_hash == signed_hash(chunks[1])
    assert [p.HasField("header") for p in parsed] == [True, False, False]


def test_a_recording_without_final_chunk_is_incomplete_not_invalid() -> None:
    chunks = make_chain(3, final=False)
    assert not verify_recording(chunks, AGENT_PUBLIC).complete
    assert fault_of(chunks, require_complete=True) is RecordingFault.INCOMPLETE


def test_another_agents_key_is_refused() -> None:
    other = keys.generate_signing_key().public_key()
    with pytest.raises(RecordingError) as caught:
        verify_recording(make_chain(2), other)
    assert caught.value.fault is RecordingFault.BAD_SIGNATURE


def test_a_chunk_signed_for_another_domain_is_refused() -> None:
    chunk = mrzap_pb2.RecordingChunk(connection_id="conn-1", seq=0, header=HEADER, final=True)
    raw = sign(AGENT_KEY, Domain.SYNACK, chunk.SerializeToString()).SerializeToString()
    assert fault_of([raw]) is RecordingFault.BAD_SIGNATURE


def test_a_forked_chain_is_refused() -> None:
    # The agent key signed two different chunk 0s; chunk 1 of one cannot follow the other.
    ours, theirs = make_chain(2), make_chain(2)
    theirs[0] = ChainSigner(AGENT_KEY, "conn-1", HEADER).sign_chunk([out(0.0, "other")])
    assert fault_of([theirs[0], ours[1]]) is RecordingFault.BROKEN_CHAIN


@pytest.mark.parametrize(
    "order",
    [[0, 2, 3], [0, 1, 1, 2, 3], [0, 2, 1, 3], [1, 2, 3]],
    ids=["dropped", "repeated", "swapped", "first-missing"],
)
def test_chunks_must_come_in_sequence(order: list[int]) -> None:
    chain = make_chain(4)
    assert fault_of([chain[i] for i in order]) is RecordingFault.OUT_OF_SEQUENCE


def test_a_chunk_of_another_connection_is_refused() -> None:
    mine, other = make_chain(2, "conn-1"), make_chain(2, "conn-2")
    assert fault_of([mine[0], other[1]]) is RecordingFault.WRONG_CONNECTION


def test_the_header_must_be_in_the_first_chunk_only() -> None:
    no_header = sign_raw(mrzap_pb2.RecordingChunk(connection_id="c", seq=0))
    assert fault_of([no_header]) is RecordingFault.BAD_HEADER

    first = sign_raw(mrzap_pb2.RecordingChunk(connection_id="c", seq=0, header=HEADER))
    second = sign_raw(
        mrzap_pb2.RecordingChunk(
            connection_id="c", seq=1, prev_hash=signed_hash(first), header=HEADER
        )
    )
    assert fault_of([first, second]) is RecordingFault.BAD_HEADER


@pytest.mark.parametrize(
    "events",
    [
        [out(0.0, "x", code="e")],
        [out(2.0, "x"), out(1.0, "y")],
        [out(-1.0, "x")],
        [out(float("nan"), "x")],
        [out(float("inf"), "x")],
        [out(0.0, "wide", code="r")],
        [out(0.0, "0x24", code="r")],
    ],
    ids=["code", "time-back", "negative", "nan", "inf", "resize-text", "resize-zero"],
)
def test_bad_events_are_refused(events: list[mrzap_pb2.RecordingEvent]) -> None:
    raw = ChainSigner(AGENT_KEY, "c", HEADER).sign_chunk(events)
    assert fault_of([raw]) is RecordingFault.BAD_EVENT


def test_a_command_with_a_bad_time_is_refused() -> None:
    raw = ChainSigner(AGENT_KEY, "c", HEADER).sign_chunk(
        commands=[mrzap_pb2.CommandRecord(time=float("nan"), command="ls")]
    )
    assert fault_of([raw]) is RecordingFault.BAD_EVENT


def test_time_must_not_go_back_across_chunks() -> None:
    signer = ChainSigner(AGENT_KEY, "c", HEADER)
    chunks = [signer.sign_chunk([out(5.0, "a")]), signer.sign_chunk([out(4.0, "b")])]
    assert fault_of(chunks) is RecordingFault.BAD_EVENT


def test_nothing_may_follow_the_final_chunk() -> None:
    chunks = make_chain(2)
    after = sign_raw(
        mrzap_pb2.RecordingChunk(connection_id="conn-1", seq=2, prev_hash=signed_hash(chunks[1]))
    )
    assert fault_of([*chunks, after]) is RecordingFault.AFTER_FINAL


def test_the_signer_refuses_to_continue_after_final() -> None:
    signer = ChainSigner(AGENT_KEY, "c", HEADER)
    signer.sign_chunk(final=True)
    assert signer.finished
    with pytest.raises(RecordingError) as caught:
        signer.sign_chunk()
    assert caught.value.fault is RecordingFault.AFTER_FINAL


def test_empty_garbage_and_oversized_input_are_refused() -> None:
    assert fault_of([]) is RecordingFault.EMPTY
    assert fault_of([b"\xff\xff\xff"]) is RecordingFault.MALFORMED
    garbage_payload = sign(AGENT_KEY, Domain.RECORDING, b"\xff\xff").SerializeToString()
    assert fault_of([garbage_payload]) is RecordingFault.MALFORMED
    huge = ChainSigner(AGENT_KEY, "c", HEADER).sign_chunk([out(0.0, "x" * MAX_SIGNED_CHUNK_BYTES)])
    assert fault_of([huge]) is RecordingFault.TOO_LARGE


def test_a_live_verifier_stays_broken_after_a_fault() -> None:
    chunks = make_chain(3)
    verifier = ChainVerifier(AGENT_PUBLIC, connection_id="conn-1")
    verifier.add(chunks[0])
    with pytest.raises(RecordingError):
        verifier.add(chunks[2])
    # The right chunk now comes too late: a chain broken once is never trusted again.
    with pytest.raises(RecordingError) as caught:
        verifier.add(chunks[1])
    assert caught.value.fault is RecordingFault.OUT_OF_SEQUENCE


def test_a_live_verifier_pinned_to_a_connection_refuses_another() -> None:
    verifier = ChainVerifier(AGENT_PUBLIC, connection_id="conn-1")
    with pytest.raises(RecordingError) as caught:
        verifier.add(make_chain(1, "conn-2")[0])
    assert caught.value.fault is RecordingFault.WRONG_CONNECTION


CHAINS = st.integers(min_value=2, max_value=5).map(make_chain)


@settings(max_examples=150, deadline=None)
@given(chain=CHAINS, data=st.data())
def test_any_flipped_byte_is_caught(chain: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(chain) - 1))
    position = data.draw(st.integers(0, len(chain[index]) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(chain[index])
    tampered[position] ^= mask
    chain[index] = bytes(tampered)
    with pytest.raises(RecordingError):
        verify_recording(chain, AGENT_PUBLIC)


@settings(max_examples=100, deadline=None)
@given(chain=CHAINS, data=st.data())
def test_any_dropped_chunk_is_caught(chain: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(chain) - 1))
    del chain[index]
    # Without its final chunk a chain reads as a session still running, so ask for a whole one.
    with pytest.raises(RecordingError):
        verify_recording(chain, AGENT_PUBLIC, require_complete=True)


@settings(max_examples=100, deadline=None)
@given(chain=CHAINS, data=st.data())
def test_any_dropped_chunk_but_the_last_is_caught_even_live(
    chain: list[bytes], data: st.DataObject
) -> None:
    del chain[data.draw(st.integers(0, len(chain) - 2))]
    with pytest.raises(RecordingError):
        verify_recording(chain, AGENT_PUBLIC)


@settings(max_examples=100, deadline=None)
@given(chain=CHAINS, data=st.data())
def test_any_duplicated_chunk_is_caught(chain: list[bytes], data: st.DataObject) -> None:
    copied = chain[data.draw(st.integers(0, len(chain) - 1))]
    chain.insert(data.draw(st.integers(0, len(chain))), copied)
    with pytest.raises(RecordingError):
        verify_recording(chain, AGENT_PUBLIC)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_reordering_is_caught(data: st.DataObject) -> None:
    chain = make_chain(data.draw(st.integers(2, 5)))
    shuffled = data.draw(st.permutations(chain).filter(lambda p: list(p) != chain))
    with pytest.raises(RecordingError):
        verify_recording(shuffled, AGENT_PUBLIC)


def test_the_header_names_the_grant_of_the_session() -> None:
    grant = mrzap_pb2.Grant(
        grant_id="grant-1", target_id="web-1", target_user="alice", subject=HEADER.subject
    )
    assert recording_header(grant, 100, 30, 1_700_000_000.5) == HEADER


def test_the_export_is_asciicast_v2() -> None:
    signer = ChainSigner(AGENT_KEY, "conn-1", HEADER)
    chunks = [
        signer.sign_chunk([out(0.25, "h\u00e9llo\r\n"), out(0.5, "90x20", "r")]),
        signer.sign_chunk([out(1.0, "\x1b[1mbye\x1b[0m\r\n")], final=True),
    ]
    header_line, *event_lines = asciicast_lines(verify_recording(chunks, AGENT_PUBLIC))

    assert json.loads(header_line) == {
        "version": 2,
        "width": 100,
        "height": 30,
        "timestamp": 1_700_000_000,
        "title": "alice@web-1",
    }
    assert [json.loads(line) for line in event_lines] == [
        [0.25, "o", "h\u00e9llo\r\n"],
        [0.5, "r", "90x20"],
        [1.0, "o", "\x1b[1mbye\x1b[0m\r\n"],
    ]


def test_asciinema_plays_the_export(tmp_path: Path) -> None:
    signer = ChainSigner(AGENT_KEY, "conn-1", HEADER)
    chunks = [
        signer.sign_chunk([out(0.0, "$ "), out(0.1, "echo hi\r", "i")]),
        signer.sign_chunk([out(0.2, "echo hi\r\nhi\r\n"), out(0.3, "$ exit\r\n")], final=True),
    ]
    cast = tmp_path / "session.cast"
    cast.write_text("\n".join(asciicast_lines(verify_recording(chunks, AGENT_PUBLIC))) + "\n")

    asciinema = Path(sys.executable).with_name("asciinema")
    played = subprocess.run(
        [str(asciinema), "cat", str(cast)], capture_output=True, timeout=20, check=True
    )
    assert played.stdout.decode() == "$ echo hi\r\nhi\r\n$ exit\r\n"


def test_a_compressed_chunk_inflates_to_its_exact_bytes() -> None:
    raw = ChainSigner(AGENT_KEY, "c", HEADER).sign_chunk([out(0.0, "hello\r\n" * 500)])
    assert inflate_chunk(compress_chunk(raw)) == raw
    assert len(compress_chunk(raw)) < len(raw) / 10


@pytest.mark.parametrize(
    "data",
    [b"not zlib", zlib.compress(b"x" * 100)[:-3], zlib.compress(b"x") + b"tail", b""],
    ids=["not-zlib", "cut-short", "trailing-bytes", "empty"],
)
def test_anything_but_one_whole_zlib_stream_is_malformed(data: bytes) -> None:
    with pytest.raises(RecordingError) as raised:
        inflate_chunk(data)
    assert raised.value.fault is RecordingFault.MALFORMED


def test_a_compression_bomb_is_refused_without_inflating_it() -> None:
    """64 MiB of zeros in about 64 KiB: inflating stops just past the limit on a chunk."""
    compressor = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(64)) + compressor.flush()
    tracemalloc.start()
    try:
        with pytest.raises(RecordingError) as raised:
            inflate_chunk(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raised.value.fault is RecordingFault.TOO_LARGE
    assert peak < 4 * MAX_SIGNED_CHUNK_BYTES
