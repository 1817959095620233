"""Cutting a session into signed recording chunks (agent/_recorder.py).

Every recording made here is checked with the offline verifier and the agent's public key, so the
tests prove the chunks chain; the clock is passed in, so cuts by age need no sleeping.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent._commands import CommandExtractor
from agent._recorder import RecorderLimits, SessionRecorder, ShellRecording
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.errors import InvalidArgument
from mrzap.recording import ChainSigner, VerifiedRecording, verify_recording

AGENT_KEY = keys.generate_signing_key()
HEADER = mrzap_pb2.RecordingHeader(width=80, height=24, target_id="web-1", target_user="alice")
OUTPUT_ONLY = mrzap_pb2.RecordSettings(output=True)
EVERYTHING = mrzap_pb2.RecordSettings(output=True, input=True)
START = 1000.0
SMALL = RecorderLimits(max_chunk_bytes=4096, max_chunk_age_s=1.0)


def recorder(
    record: mrzap_pb2.RecordSettings = OUTPUT_ONLY, limits: RecorderLimits | None = None
) -> SessionRecorder:
    return SessionRecorder(ChainSigner(AGENT_KEY, "conn-1", HEADER), record, START, limits)


def verified(chunks: list[bytes]) -> VerifiedRecording:
    return verify_recording(chunks, AGENT_KEY.public_key(), require_complete=True)


def text_of(recording: VerifiedRecording, code: str) -> str:
    return "".join(event.data for event in recording.events if event.code == code)


def test_a_session_becomes_a_verified_asciicast_recording() -> None:
    session = recorder(EVERYTHING)
    chunks = [
        *session.output(b"$ ", START + 0.1),
        *session.input(b"ls\r", START + 0.5),
        *session.resize(120, 40, START + 0.6),
        *session.output(b"ls\r\na  b\r\n", START + 0.7),
        *session.close(START + 2.0),
    ]
    recording = verified(chunks)
    assert [(round(e.time, 6), e.code, e.data) for e in recording.events] == [
        (0.1, "o", "$ "),
        (0.5, "i", "ls\r"),
        (0.6, "r", "120x40"),
        (0.7, "o", "ls\r\na  b\r\n"),
    ]
    assert recording.header == HEADER
    assert len(chunks) == 1  # all of it fitted in the final chunk


def test_input_is_recorded_only_when_the_grant_says_so() -> None:
    session = recorder(OUTPUT_ONLY)
    chunks = [*session.input(b"secret plan\r", START), *session.close(START + 1)]
    assert verified(chunks).events == ()


def test_a_password_is_never_recorded() -> None:
    session = recorder(EVERYTHING)
    chunks = [
        *session.input(b"sudo ls\r", START),
        *session.input(b"hunter2\r", START + 1, secret=True),
        *session.close(START + 2),
    ]
    assert text_of(verified(chunks), "i") == "sudo ls\r"


def test_nothing_of_the_terminal_is_recorded_when_output_is_off() -> None:
    session = recorder(mrzap_pb2.RecordSettings())
    chunks = [
        *session.output(b"hello", START),
        *session.resize(100, 30, START),
        *session.close(START + 1),
    ]
    assert verified(chunks).events == ()


def test_impossible_sizes_are_not_recorded() -> None:
    session = recorder()
    chunks = [*session.resize(0, 24, START), *session.resize(80, 100_000, START)]
    assert verified([*chunks, *session.close(START)]).events == ()


def test_a_chunk_is_cut_when_its_oldest_event_is_old_enough() -> None:
    session = recorder(limits=SMALL)
    assert session.next_deadline() is None
    assert session.output(b"a", START + 0.2) == []
    assert session.output(b"b", START + 0.9) == []
    assert session.next_deadline() == pytest.approx(START + 1.2)
    assert session.due(START + 1.1) == []
    (chunk,) = session.due(START + 1.2)
    assert session.next_deadline() is None
    assert session.due(START + 5) == []
    assert text_of(verified([chunk, *session.close(START + 6)]), "o") == "ab"


def test_a_chunk_is_cut_when_it_is_full_and_big_reads_are_split() -> None:
    session = recorder(limits=SMALL)
    output = bytes(range(32, 127)) * 200  # 19 000 bytes in one read
    chunks = [*session.output(output, START), *session.close(START + 1)]
    assert len(chunks) >= 5
    assert all(len(raw) <= SMALL.max_chunk_bytes + 512 for raw in chunks)
    assert text_of(verified(chunks), "o") == output.decode()


def test_characters_split_across_reads_are_kept_whole() -> None:
    session = recorder()
    snowman = "\u2603".encode()
    chunks = [
        *session.output(b"a" + snowman[:1], START),
        *session.output(snowman[1:] + b"b", START + 0.1),
        *session.output(b"\xe2\x98", START + 0.2),  # cut short by the end of the session
        *session.close(START + 1),
    ]
    assert text_of(verified(chunks), "o") == "a\u2603b\ufffd"


def test_undecodable_output_stays_within_the_chunk_size() -> None:
    session = recorder(limits=SMALL)
    chunks = [*session.output(b"\xff" * 10_000, START), *session.close(START + 1)]
    assert all(len(raw) <= SMALL.max_chunk_bytes + 512 for raw in chunks)
    assert text_of(verified(chunks), "o") == "\ufffd" * 10_000


def test_time_never_goes_back() -> None:
    session = recorder()
    chunks = [
        *session.output(b"a", START + 5),
        *session.output(b"b", START + 3),
        *session.close(START + 1),
    ]
    assert [e.time for e in verified(chunks).events] == [5.0, 5.0]


def test_typed_commands_travel_signed_in_the_chunks() -> None:
    session = recorder(limits=SMALL)
    extractor = CommandExtractor()
    chunks: list[bytes] = []
    for now, keys_typed in [(START + 1, b"ls -l\r"), (START + 3, b"cd /tm\t\r")]:
        chunks += session.due(now)  # the timer at the pending chunk's deadline fired first
        elapsed = session.elapsed(now)
        chunks += session.commands(extractor.feed(keys_typed, elapsed), now)
    chunks += session.close(START + 4)

    recording = verified(chunks)
    assert [(seq, c.time, c.command) for seq, c in recording.commands] == [
        (0, 1.0, "ls -l"),
        (1, 3.0, "cd /tm\u27e8tab\u27e9"),
    ]


def test_a_shell_recording_logs_commands_but_not_passwords_or_editor_keys() -> None:
    shell = ShellRecording(recorder(EVERYTHING))
    chunks = [
        *shell.output(b"$ ", START),
        *shell.input(b"sudo id\r", START + 1),
        *shell.output(b"[sudo] password: ", START + 1.1),
        *shell.input(b"hunter2\r", START + 2, secret=True),
        *shell.output(b"uid=0(root)\r\n$ ", START + 2.1),
        *shell.input(b"vim notes\r", START + 3),
        *shell.output(b"\x1b[?1049h~\r\n~", START + 3.1),
        *shell.input(b"irm -rf /\x1b:wq\r", START + 4),
        *shell.output(b"\x1b[?1049l$ ", START + 4.1),
        *shell.input(b"ls\r", START + 5),
        *shell.close(START + 6),
    ]
    recording = verified(chunks)
    assert [(c.time, c.command) for _, c in recording.commands] == [
        (1.0, "sudo id"),
        (3.0, "vim notes"),
        (5.0, "ls"),
    ]
    assert "hunter2" not in text_of(recording, "i")
    assert "irm -rf /" in text_of(recording, "i")  # input recording still shows the editor keys


def test_commands_are_logged_when_the_terminal_is_not_recorded() -> None:
    shell = ShellRecording(recorder(mrzap_pb2.RecordSettings()))
    chunks = [*shell.output(b"$ ", START), *shell.input(b"whoami\r", START + 1)]
    recording = verified([*chunks, *shell.close(START + 2)])
    assert recording.events == ()
    assert [c.command for _, c in recording.commands] == ["whoami"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: RecorderLimits(max_chunk_bytes=100),
        lambda: RecorderLimits(max_chunk_age_s=0),
        lambda: RecorderLimits(max_chunk_age_s=61),
    ],
    ids=["tiny-chunks", "no-age", "long-age"],
)
def test_limits_are_checked(make: Callable[[], RecorderLimits]) -> None:
    with pytest.raises(InvalidArgument):
        make()


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("output"), st.binary(max_size=3000)),
        st.tuples(st.just("input"), st.binary(max_size=300)),
        st.tuples(st.just("resize"), st.integers(1, 500)),
        st.tuples(st.just("wait"), st.floats(0, 2)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(operations=OPERATIONS)
def test_memory_stays_bounded_and_every_recording_verifies(
    operations: list[tuple[str, object]],
) -> None:
    session = recorder(EVERYTHING, SMALL)
    now = START
    chunks: list[bytes] = []
    output = b""
    for kind, value in operations:
        if kind == "output" and isinstance(value, bytes):
            chunks += session.output(value, now)
            output += value
        elif kind == "input" and isinstance(value, bytes):
            chunks += session.input(value, now)
        elif kind == "resize" and isinstance(value, int):
            chunks += session.resize(value, 24, now)
        elif isinstance(value, float):
            now += value
            chunks += session.due(now)
        assert session.pending_bytes <= SMALL.max_chunk_bytes
    chunks += session.close(now)

    assert all(len(raw) <= SMALL.max_chunk_bytes + 512 for raw in chunks)
    assert text_of(verified(chunks), "o") == output.decode(errors="replace")
