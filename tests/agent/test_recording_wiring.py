"""The agent's recording wiring: a real login shell on a real PTY, recorded through its tap.

The shell runs as the user running the tests (no other account is needed). Only the control
stream is faked: a `send` that collects what the uplink writes, so the tests can verify the chunks
with `verify_recording` exactly as the broker and zli do.
"""

from __future__ import annotations

import asyncio
import pwd
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agent._pty import PtyShell, ShellOutput
from agent._recorder import RecorderLimits
from agent._recording_tap import Recorder, RecordingTap
from agent._shell_process import TargetUser
from agent._uplink import RecordingUplink
from bastion.agent.v1 import agent_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.recording import VerifiedRecording, inflate_chunk, verify_recording
from tests.accounts import LOGIN

WAIT_S = 10.0
ME = pwd.getpwnam(LOGIN)


class Collected:
    """A fake control stream: the recording chunks the uplink wrote, in order."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        """The chunks' signed bytes (inflated when they came compressed)."""
        self.compressed = 0
        """How many came as compressed_recording_chunk."""
        self.arrived = asyncio.Event()
        self.fail = False

    async def send(self, request: pb.ControlRequest) -> None:
        if self.fail:
            raise ConnectionResetError("the stream broke")
        if request.WhichOneof("frame") == "compressed_recording_chunk":
            self.chunks.append(inflate_chunk(request.compressed_recording_chunk))
            self.compressed += 1
        else:
            assert request.WhichOneof("frame") == "recording_chunk"
            self.chunks.append(request.recording_chunk)
        self.arrived.set()

    async def wait_for(self, count: int) -> None:
        async def enough() -> None:
            while len(self.chunks) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), WAIT_S)


def grant(*, output: bool = True, input_: bool = False) -> mrzap_pb2.Grant:
    return mrzap_pb2.Grant(
        grant_id="grant-1",
        target_id="target-1",
        target_user=ME.pw_name,
        subject=mrzap_pb2.Subject(iss="https://idp", sub="alice-sub", email="alice@example.com"),
        record=mrzap_pb2.RecordSettings(output=output, input=input_),
    )


class Recorded:
    """A shell recorded through a Recorder whose uplink writes to `collected`."""

    def __init__(self, shell: PtyShell, output: ShellOutput, collected: Collected) -> None:
        self.shell = shell
        self.output = output
        self.collected = collected
        self.key = keys.generate_signing_key()
        self.recorder = Recorder(self.key, limits=RecorderLimits(max_chunk_age_s=0.2))
        self.tap: RecordingTap | None = None

    def start(self, settings: mrzap_pb2.Grant) -> None:
        self.recorder.uplink.connected(self.collected.send)
        self.tap = self.recorder.start_shell(self.shell, "conn-1", settings, rows=24, cols=80)

    async def read_until(self, pattern: bytes) -> bytes:
        seen = b""

        async def collect() -> None:
            nonlocal seen
            while not re.search(pattern, seen):
                data = await self.output.read()
                if not data:
                    raise AssertionError(f"terminal closed before {pattern!r}: {seen!r}")
                seen += data

        await asyncio.wait_for(collect(), WAIT_S)
        return seen

    async def end(self) -> VerifiedRecording:
        """Exit the shell, wait for the final chunk, verify the whole recording."""
        await self.shell.write_stdin(b"exit\n")
        await asyncio.wait_for(self.shell.wait(), WAIT_S)
        await self.shell.close()
        assert self.tap is not None
        assert self.tap.closed

        async def final() -> None:
            while (
                not self.collected.chunks
                or not verify_recording(self.collected.chunks, self.key.public_key()).complete
            ):
                self.collected.arrived.clear()
                await self.collected.arrived.wait()

        await asyncio.wait_for(final(), WAIT_S)
        return verify_recording(self.collected.chunks, self.key.public_key(), require_complete=True)


@pytest_asyncio.fixture
async def recorded(tmp_path: Path) -> AsyncIterator[Recorded]:
    user = TargetUser.lookup(ME.pw_name)
    # A login shell in an empty home: nothing of the machine's profiles (which may be slow, or
    # wait for a lock) runs before the test types.
    user = TargetUser(user.name, user.uid, user.gid, str(tmp_path), "/bin/bash")
    shell = await PtyShell.start(user, term="dumb")
    made = Recorded(shell, shell.attach(), Collected())
    try:
        yield made
    finally:
        await shell.close()
        made.recorder.uplink.disconnected()


def text(recording: VerifiedRecording, code: str) -> str:
    return "".join(event.data for event in recording.events if event.code == code)


def commands(recording: VerifiedRecording) -> list[str]:
    return [command.command for _, command in recording.commands]


@pytest.mark.asyncio
async def test_a_shell_is_recorded_as_a_verified_chain_with_its_commands(
    recorded: Recorded,
) -> None:
    recorded.start(grant())
    await recorded.shell.write_stdin(b"echo hello-$((40+2))\n")
    await recorded.read_until(rb"hello-42")
    # The timer cuts a chunk of a quiet session without waiting for the end.
    await recorded.collected.wait_for(1)
    recorded.shell.resize(30, 100)
    recording = await recorded.end()
    assert recording.connection_id == "conn-1"
    assert recording.header.subject.sub == "alice-sub"
    assert recording.header.target_user == ME.pw_name
    assert "hello-42" in text(recording, "o")
    assert text(recording, "i") == ""  # input is not recorded unless the grant asks
    assert "100x30" in [event.data for event in recording.events if event.code == "r"]
    assert commands(recording) == ["echo hello-$((40+2))", "exit"]


@pytest.mark.asyncio
async def test_input_is_recorded_when_the_grant_asks(recorded: Recorded) -> None:
    recorded.start(grant(input_=True))
    await recorded.shell.write_stdin(b"echo typed-$((1+1))\n")
    await recorded.read_until(rb"typed-2")
    recording = await recorded.end()
    assert "echo typed-$((1+1))" in text(recording, "i")


@pytest.mark.asyncio
async def test_a_password_prompt_is_not_recorded_even_with_input(recorded: Recorded) -> None:
    recorded.start(grant(input_=True))
    # As getpass does: echo off before the prompt, so the terminal reads a secret now.
    await recorded.shell.write_stdin(
        b"stty -echo; printf 'Sec''ret> '; read -r pw; stty echo; echo length ${#pw}\n"
    )
    await recorded.read_until(rb"Secret> ")  # not in the echo of the command line
    await recorded.shell.write_stdin(b"hunter2-pw\n")
    await recorded.read_until(rb"length 10")
    recording = await recorded.end()
    assert "hunter2-pw" not in text(recording, "i")
    assert "hunter2-pw" not in text(recording, "o")
    assert not any("hunter2-pw" in command for command in commands(recording))
    assert "stty -echo" in text(recording, "i")  # what was typed at the shell prompt is there


@pytest.mark.asyncio
async def test_a_detached_shell_keeps_recording_while_the_stream_is_down(
    recorded: Recorded,
) -> None:
    recorded.start(grant())
    recorded.recorder.uplink.disconnected()
    recorded.shell.detach()
    await recorded.shell.write_stdin(b"echo while-away-$((3*3))\n")
    await recorded.shell.write_stdin(b"exit\n")
    await asyncio.wait_for(recorded.shell.wait(), WAIT_S)
    await recorded.shell.close()
    assert recorded.collected.chunks == []
    assert recorded.recorder.uplink.queued_bytes > 0
    recorded.recorder.uplink.connected(recorded.collected.send)
    key = recorded.key.public_key()

    async def complete() -> None:
        while not (
            recorded.collected.chunks and verify_recording(recorded.collected.chunks, key).complete
        ):
            recorded.collected.arrived.clear()
            await recorded.collected.arrived.wait()

    await asyncio.wait_for(complete(), WAIT_S)
    recording = verify_recording(recorded.collected.chunks, key, require_complete=True)
    assert "while-away-9" in text(recording, "o")
    assert "echo while-away-$((3*3))" in commands(recording)


@pytest.mark.asyncio
async def test_the_uplink_resends_after_a_broken_stream_in_order() -> None:
    uplink = RecordingUplink(resend_bytes=10)
    broken = Collected()
    broken.fail = True
    uplink.put([b"a" * 5, b"b" * 5])
    uplink.connected(broken.send)
    await asyncio.sleep(0.05)  # the pump tries, fails and stops
    uplink.put([b"c" * 5])
    good = Collected()
    uplink.connected(good.send)
    await good.wait_for(3)
    assert good.chunks == [b"a" * 5, b"b" * 5, b"c" * 5]
    uplink.put([b"d" * 5])
    await good.wait_for(4)
    # A new stream resends the last chunks written (up to resend_bytes), then continues.
    again = Collected()
    uplink.connected(again.send)
    uplink.put([b"e" * 5])
    await again.wait_for(3)
    assert again.chunks == [b"c" * 5, b"d" * 5, b"e" * 5]
    uplink.disconnected()


@pytest.mark.asyncio
async def test_chunks_go_compressed_only_to_a_broker_that_accepts_them() -> None:
    uplink = RecordingUplink()
    chunks = [b"small " * 10, b"large terminal output " * 1000]  # inline and in a thread
    uplink.put(chunks)
    accepting = Collected()
    uplink.connected(accepting.send, compress=True)
    await accepting.wait_for(2)
    assert (accepting.chunks, accepting.compressed) == (chunks, 2)
    older = Collected()  # a broker whose Welcome does not say it accepts them
    uplink.connected(older.send)
    await older.wait_for(2)  # the resend after a reconnection
    assert (older.chunks, older.compressed) == (chunks, 0)
    uplink.disconnected()


@pytest.mark.asyncio
async def test_a_full_uplink_pauses_the_shell_instead_of_losing_chunks(
    recorded: Recorded,
) -> None:
    recorded.recorder = Recorder(
        recorded.key,
        RecordingUplink(max_bytes=1),
        RecorderLimits(max_chunk_bytes=1024, max_chunk_age_s=0.05),
    )
    recorded.tap = recorded.recorder.start_shell(
        recorded.shell, "conn-1", grant(), rows=24, cols=80
    )
    await recorded.shell.write_stdin(b"echo first-$((2+2))\n")
    assert recorded.tap is not None

    # Nobody takes the chunks: once one is queued (the prompt's, or first-4's) the tap refuses
    # more and reading pauses.
    async def refused() -> None:
        while recorded.tap is not None and recorded.tap.accepting:  # noqa: ASYNC110 - a property
            await asyncio.sleep(0.02)

    await asyncio.wait_for(refused(), WAIT_S)
    await recorded.shell.write_stdin(b"echo second-$((3+3))\n")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(recorded.read_until(rb"second-6"), 0.5)
    recorded.recorder.uplink.connected(recorded.collected.send)
    await recorded.read_until(rb"second-6")
    recording = await recorded.end()
    assert "second-6" in text(recording, "o")
