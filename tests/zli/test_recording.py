"""`zli recording` against a real gRPC AuditService on loopback (tests/zli/audit_fake.py) serving
chunks signed with real Ed25519 keys: zli shows a recording only once every chunk verified, names
the fault and the chunk of any tampering (flipped byte, dropped, reordered, another key, another
connection), verifies offline from a raw export, and exports asciicast that asciinema plays.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.mrzap.v1 import mrzap_pb2
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap import errors, keys
from mrzap.recording import ChainSigner
from mrzap.timestamps import to_timestamp
from zli._playback import agent_key, verify_chunks
from zli._recording_files import RawRecording, read_raw, write_raw
from zli.cli import main

from .audit_fake import API_KEY, AuditData, RunningServer, serve, zli_calls

AGENT_KEY = keys.generate_signing_key()
OTHER_KEY = keys.generate_signing_key()
T0 = 1_900_000_000.0
ALICE = auth_pb.User(
    id="user-alice", email="alice@example.com", subject=mrzap_pb2.Subject(email="alice@example.com")
)
BOB = auth_pb.User(id="user-bob", email="bob@example.com")
WEB = registry_pb.Target(id="6d1f7a7e-0b8e-4c57-8d0e-3f7f2f6c9a11", name="web-1")
HEADER = mrzap_pb2.RecordingHeader(
    width=80,
    height=24,
    started_at=to_timestamp(T0),
    target_id=WEB.id,
    target_user="alice",
    subject=ALICE.subject,
)


def out(time: float, data: str, code: str = "o") -> mrzap_pb2.RecordingEvent:
    return mrzap_pb2.RecordingEvent(time=time, code=code, data=data)


def session_chunks(connection_id: str = "conn-1", *, final: bool = True) -> list[bytes]:
    """A short shell session in four chunks: prompt, a command, its output, exit."""
    signer = ChainSigner(AGENT_KEY, connection_id, HEADER)
    return [
        signer.sign_chunk([out(0.0, "$ ")]),
        signer.sign_chunk(
            [out(1.0, "ls\r", "i"), out(1.0, "ls\r\n"), out(1.5, "120x40", "r")],
            [mrzap_pb2.CommandRecord(time=1.0, command="ls")],
        ),
        signer.sign_chunk([out(2.0, "a.txt  b.txt\r\n"), out(12.0, "$ ")]),
        signer.sign_chunk([out(13.0, "exit\r\n")], final=final),
    ]


SESSION_OUTPUT = "$ ls\r\na.txt  b.txt\r\n$ exit\r\n"


def recording(
    connection_id: str = "conn-1", key: bytes | None = None, chunk_count: int = 4
) -> audit_pb.Recording:
    return audit_pb.Recording(
        connection_id=connection_id,
        target_id=WEB.id,
        user_id=ALICE.id,
        subject=ALICE.subject,
        target_user="alice",
        state=audit_pb.RECORDING_STATE_COMPLETE,
        start_time=to_timestamp(T0),
        end_time=to_timestamp(T0 + 3723),
        chunk_count=chunk_count,
        agent_public_key=keys.public_key_bytes(AGENT_KEY) if key is None else key,
    )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    data = AuditData(targets=[WEB], users=[BOB, ALICE], me=ALICE)
    data.recordings["conn-1"] = (recording(), session_chunks())
    for running in serve(data):
        with zli_calls(running, monkeypatch):
            yield running


def zli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def store(fake: RunningServer, chunks: list[bytes], key: bytes | None = None) -> None:
    fake.data.recordings["conn-1"] = (recording(key=key, chunk_count=len(chunks)), chunks)


def flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


# --- list --------------------------------------------------------------------------------------


def test_list_resolves_names_and_shows_a_table(fake: RunningServer) -> None:
    result = zli("recording", "list", "--user", "bob@example.com", "--target", "web-1")
    assert result.exit_code == 0, result.output
    request = fake.data.sent("ListRecordings")[0]
    assert (request.user_id, request.target_id) == (BOB.id, WEB.id)
    assert result.stdout.splitlines() == [
        "ID      USER               TARGET  AS     START (UTC)          DURATION  STATE     CHUNKS",
        "conn-1  alice@example.com  web-1   alice  2030-03-17 17:46:40  1:02:03   complete  4",
    ]
    assert all(token == f"Bearer {API_KEY}" for token in fake.data.tokens)


def test_a_user_names_targets_by_id_and_sees_ids_where_names_are_hidden(
    fake: RunningServer,
) -> None:
    fake.data.admin = False
    by_id = zli("recording", "list", "--target", WEB.id, "--user", ALICE.email)
    assert by_id.exit_code == 0, by_id.output
    assert fake.data.sent("ListRecordings")[0].target_id == WEB.id
    assert f"alice@example.com  {WEB.id}  alice" in by_id.stdout  # no names to show
    by_name = zli("recording", "list", "--target", "web-1")
    assert by_name.exit_code == 5
    assert "no target named 'web-1'" in by_name.stderr
    other_user = zli("recording", "list", "--user", BOB.email)
    assert other_user.exit_code == 4
    assert "only administrators may see other users' records" in other_user.stderr
    assert len(fake.data.sent("ListRecordings")) == 1


def test_list_reads_every_page_only_with_all(fake: RunningServer) -> None:
    for n in (2, 3):
        fake.data.recordings[f"conn-{n}"] = (recording(f"conn-{n}"), [])
    first = zli("recording", "list", "--state", "complete")
    assert first.exit_code == 0, first.output
    assert "conn-3" not in first.stdout
    assert "add --all" in first.stderr
    assert list(fake.data.sent("ListRecordings")[0].states) == [audit_pb.RECORDING_STATE_COMPLETE]
    every = zli("recording", "list", "--all", "--json")
    assert [r["connection_id"] for r in json.loads(every.stdout)] == ["conn-1", "conn-2", "conn-3"]


# --- play --------------------------------------------------------------------------------------


def test_play_replays_output_with_scaled_and_capped_pauses(
    fake: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr("zli._recording._sleep", pauses.append)
    result = zli("recording", "play", "conn-1", "--speed", "2", "--idle-limit", "5")
    assert result.exit_code == 0, result.output
    # Input and resize events are not replayed.
    assert result.stdout_bytes.decode() == SESSION_OUTPUT
    # Output at 0, 1, 2, 12 (a 10 s pause, capped to 5) and 13 seconds, played twice as fast.
    assert pauses == [0.5, 0.5, 2.5, 0.5]


def test_play_refuses_a_tampered_recording_unless_told_not_to_verify(
    fake: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("zli._recording._sleep", lambda _: None)
    chunks = session_chunks()
    chunks[2] = chunks[2].replace(b"a.txt", b"x.txt")  # the service rewrites what was shown
    store(fake, chunks)
    refused = zli("recording", "play", "conn-1")
    assert refused.exit_code == 8
    assert refused.stdout == ""
    assert "FAILED verification: BAD_SIGNATURE at chunk 2" in refused.stderr
    forced = zli("recording", "play", "conn-1", "--no-verify")
    assert forced.exit_code == 0
    assert "x.txt" in forced.stdout
    assert "WITHOUT verification" in forced.stderr


# --- verify ------------------------------------------------------------------------------------


def test_verify_reports_counts_and_the_agent_key(fake: RunningServer) -> None:
    result = zli("recording", "verify", "conn-1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "OK: recording conn-1: 4 chunks, 7 events, 1 commands, complete; "
        "signed by agent key SHA256:"
    )


def _tampered() -> dict[str, tuple[list[bytes], bytes | None, str]]:
    """Each way a service could tamper, with the fault and chunk zli must name."""
    good = session_chunks()
    other = ChainSigner(OTHER_KEY, "conn-1", HEADER)
    return {
        "flipped byte": (
            [*good[:1], flip(good[1], 40), *good[2:]],
            None,
            "BAD_SIGNATURE at chunk 1",
        ),
        "dropped chunk": ([good[0], *good[2:]], None, "OUT_OF_SEQUENCE at chunk 1"),
        "reordered": ([good[0], good[2], good[1], good[3]], None, "OUT_OF_SEQUENCE at chunk 1"),
        "repeated": ([*good[:2], good[1], *good[2:]], None, "OUT_OF_SEQUENCE at chunk 2"),
        "wrong key": (good, keys.public_key_bytes(OTHER_KEY), "BAD_SIGNATURE at chunk 0"),
        "forged with its own key": (
            [other.sign_chunk([out(0, "$ ")], final=True)],
            None,
            "BAD_SIGNATURE at chunk 0",
        ),
        "another connection": (session_chunks("conn-9"), None, "WRONG_CONNECTION at chunk 0"),
        "no chunks": ([], None, "EMPTY:"),
    }


@pytest.mark.parametrize("case", list(_tampered()))
def test_verify_names_the_fault_and_the_chunk(fake: RunningServer, case: str) -> None:
    chunks, key, expected = _tampered()[case]
    store(fake, chunks, key)
    result = zli("recording", "verify", "conn-1")
    assert result.exit_code == 8, result.output
    assert f"zli: recording conn-1 FAILED verification: {expected}" in result.stderr
    assert "OK" not in result.stdout


def test_verify_with_a_pinned_key_refuses_a_key_the_service_swapped_in(
    fake: RunningServer,
) -> None:
    forger = ChainSigner(OTHER_KEY, "conn-1", HEADER)
    store(fake, [forger.sign_chunk([out(0, "$ ")], final=True)], keys.public_key_bytes(OTHER_KEY))
    unpinned = zli("recording", "verify", "conn-1")
    assert unpinned.exit_code == 0  # consistent with the key the service names...
    pinned_key = base64.b64encode(keys.public_key_bytes(AGENT_KEY)).decode()
    pinned = zli("recording", "verify", "conn-1", "--key", pinned_key)
    assert pinned.exit_code == 8  # ...but not with the target's real key
    assert "not the key given with --key" in pinned.stderr


def test_verify_can_require_the_final_chunk(fake: RunningServer) -> None:
    store(fake, session_chunks(final=False)[:3])
    live = zli("recording", "verify", "conn-1")
    assert live.exit_code == 0
    assert "incomplete (no final chunk)" in live.stdout
    required = zli("recording", "verify", "conn-1", "--require-complete")
    assert required.exit_code == 8
    assert "INCOMPLETE at chunk 2" in required.stderr


def test_verify_needs_an_id_or_a_file(fake: RunningServer) -> None:
    assert zli("recording", "verify").exit_code == 2
    assert zli("recording", "verify", "conn-1", "--file", "x").exit_code == 2


# --- export ------------------------------------------------------------------------------------


def test_raw_export_verifies_offline_and_catches_tampering_of_the_file(
    fake: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "conn-1.mrzap"
    saved = zli("recording", "export", "conn-1", "--raw", str(raw))
    assert saved.exit_code == 0, saved.output
    assert stat.S_IMODE(raw.stat().st_mode) == 0o600

    def no_service(*_: object) -> None:
        raise errors.Unavailable("offline")

    monkeypatch.setattr("zli._context.connect", no_service)
    offline = zli("recording", "verify", "--file", str(raw))
    assert offline.exit_code == 0, offline.output
    assert offline.stdout.startswith("OK: recording conn-1: 4 chunks")

    original = raw.read_text().splitlines()
    lines = list(original)
    entry = json.loads(lines[3])
    entry["signed"] = base64.b64encode(flip(base64.b64decode(entry["signed"]), 50)).decode()
    lines[3] = json.dumps(entry)
    raw.write_text("\n".join(lines) + "\n")
    tampered = zli("recording", "verify", "--file", str(raw))
    assert tampered.exit_code == 8
    assert "BAD_SIGNATURE at chunk 2" in tampered.stderr

    dropped = [*original[:2], *original[3:]]  # the header line, then chunk 0, 2, 3
    raw.write_text("\n".join(dropped) + "\n")
    assert "OUT_OF_SEQUENCE at chunk 1" in zli("recording", "verify", "--file", str(raw)).stderr


def test_verify_file_refuses_what_is_not_a_raw_recording(tmp_path: Path) -> None:
    cast = tmp_path / "x.cast"
    cast.write_text('{"version": 2}\n')
    result = zli("recording", "verify", "--file", str(cast))
    assert result.exit_code == 8
    assert "is not a raw recording" in result.stderr
    broken = tmp_path / "broken.mrzap"
    broken.write_text(
        '{"format": "mrzap-recording/1", "agent_public_key": "AA=="}\n{"signed": 1}\n'
    )
    refused = zli("recording", "verify", "--file", str(broken))
    assert "line 2 lacks its base64 data" in refused.stderr


def test_export_writes_asciicast_that_asciinema_plays(fake: RunningServer, tmp_path: Path) -> None:
    cast = tmp_path / "session.cast"
    result = zli("recording", "export", "conn-1", "-o", str(cast))
    assert result.exit_code == 0, result.output
    assert json.loads(cast.read_text().splitlines()[0])["width"] == 80
    asciinema = Path(sys.executable).with_name("asciinema")
    played = subprocess.run(
        [str(asciinema), "cat", str(cast)], capture_output=True, timeout=30, check=True
    )
    assert played.stdout.decode() == SESSION_OUTPUT


def test_export_refuses_a_tampered_recording(fake: RunningServer, tmp_path: Path) -> None:
    chunks = session_chunks()
    store(fake, [*chunks[:2], chunks[3]])
    result = zli("recording", "export", "conn-1", "-o", str(tmp_path / "x.cast"))
    assert result.exit_code == 8
    assert "OUT_OF_SEQUENCE at chunk 2" in result.stderr
    assert not (tmp_path / "x.cast").exists()


# --- watch -------------------------------------------------------------------------------------


def test_watch_shows_each_verified_chunk_and_ends_at_the_final_one(fake: RunningServer) -> None:
    result = zli("recording", "watch", "conn-1")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.decode() == SESSION_OUTPUT
    assert "the session ended (4 chunks verified)" in result.stderr
    assert fake.data.sent("WatchRecording")[0].start_seq == 0


def test_watch_stops_at_a_tampered_chunk_having_shown_only_verified_output(
    fake: RunningServer,
) -> None:
    chunks = session_chunks()
    store(fake, [chunks[0], chunks[1], flip(chunks[2], 60), chunks[3]])
    result = zli("recording", "watch", "conn-1")
    assert result.exit_code == 8
    assert result.stdout_bytes == b"$ ls\r\n"
    assert "BAD_SIGNATURE at chunk 2" in result.stderr


def test_watch_refuses_another_sessions_chunks_before_showing_them(fake: RunningServer) -> None:
    store(fake, session_chunks("conn-9"))  # validly signed, but for another connection
    result = zli("recording", "watch", "conn-1")
    assert result.exit_code == 8
    assert result.stdout_bytes == b""
    assert "WRONG_CONNECTION at chunk 0" in result.stderr


def test_watch_says_when_the_recording_stops_without_its_final_chunk(fake: RunningServer) -> None:
    store(fake, session_chunks(final=False))
    result = zli("recording", "watch", "conn-1")
    assert result.exit_code == 0
    assert "without a final chunk" in result.stderr


def test_an_unknown_recording_is_not_found(fake: RunningServer) -> None:
    for command in ("play", "watch", "verify", "export"):
        result = zli("recording", command, "conn-404")
        assert result.exit_code == 5, (command, result.output)


# --- the raw file parser -----------------------------------------------------------------------


def _raw_file_text() -> str:
    path = Path(tempfile.mkdtemp()) / "good.mrzap"
    write_raw(path, RawRecording(recording(), tuple(session_chunks())))
    return path.read_text()


RAW_TEXT = _raw_file_text()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), replacement=st.characters(exclude_categories=["Cs"]))
def test_any_edit_of_a_raw_file_is_refused_cleanly_or_still_verifies(
    position: int, replacement: str, tmp_path: Path
) -> None:
    """Whatever one character of a raw file becomes, zli reads it to a clear refusal or to the
    same verified recording, never to a crash or to different content."""
    at = position % len(RAW_TEXT)
    path = tmp_path / "edited.mrzap"
    path.write_text(RAW_TEXT[:at] + replacement + RAW_TEXT[at + 1 :])
    try:
        raw = read_raw(path)
        key = agent_key(raw.recording.agent_public_key)
        verified = verify_chunks(raw.chunks, key, raw.recording.connection_id)
    except errors.MrzapError:
        return
    assert "".join(e.data for e in verified.events if e.code == "o") == SESSION_OUTPUT
