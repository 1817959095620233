"""Recording end to end: a shell through the broker on a real agent, recorded and served.

Real IdP, `mrzapd serve` and a registered `mrzap-agent run` process. Alice (an administrator)
opens a shell through BrokerService.OpenConnection and Channel, driven from the test with
mrzap.handshake and mrzap.channel as in test_connections.py; the agent records it, the broker
verifies and stores the signed chunks, and AuditService serves them: the chain verifies offline
with the agent key it names, the typed command is a COMMAND event, a live viewer gets the chunks
as they come, and bob (a user) can read neither the recording nor the command.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.audit.v1 import audit_service_pb2_grpc as audit_grpc
from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.recording import verify_recording

from .client_channel import ClientChannel, metadata, open_channel
from .targets import ME, online_site
from .test_agents import Org
from .test_connections import run_exec

TIMEOUT_S = 15.0
POLICY = f"""\
name: alice-shell
kind: target_connect
subjects:
  emails: [alice@example.com]
targets:
  environments: [e2e-recording]
target_users: [{ME}]
verbs: [shell, exec]
max_session_duration: 1h
---
name: record-input
kind: session_recording
subjects:
  emails: [alice@example.com]
targets:
  environments: [e2e-recording]
record_input: true
"""


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Org, str, Path]]:
    """The cluster, alice (admin) and bob (user) logged in, a policy, an online agent;
    (org, target id, bob's zli home)."""
    root = tmp_path_factory.mktemp("recording-server")
    with online_site(
        root, users=("alice", "bob"), env="e2e-recording", policy=POLICY, agents=("rec-1",)
    ) as site:
        yield site.org, site.target_id, site.homes["bob"]


class Shell:
    """Alice's shell through the broker: type, read until, exit."""

    def __init__(self, channel: ClientChannel) -> None:
        self._channel = channel
        self.seen = b""

    def leave(self) -> None:
        """The client goes away; the shell keeps running on the target."""
        self._channel.close()

    async def type(self, text: str) -> None:
        await self._channel.send(mrzap_pb2.ChannelMessage(stdin=text.encode()))

    async def read_until(self, pattern: bytes) -> int | None:
        """Read output until `pattern` shows; the exit code if the shell ended first."""
        while not re.search(pattern, self.seen):
            message = await self._channel.receive()
            assert message is not None, self.seen
            if message.HasField("exit"):
                return message.exit.code
            self.seen += message.stdout
        return None


async def open_shell(
    org: Org, target_id: str, stub: pb_grpc.BrokerServiceAsyncStub
) -> tuple[Shell, str]:
    """A new shell as alice; (the shell, its connection id)."""
    channel = await open_channel(
        stub,
        org.admin,
        target_id,
        mrzap_pb2.ShellOpen(target_user=ME, term="dumb", rows=24, cols=80),
        target_user=ME,
        timeout_s=TIMEOUT_S,
        call_timeout_s=TIMEOUT_S * 2,
    )
    connection_id = channel.established.synack.result.connection_id
    assert connection_id
    return Shell(channel), connection_id


async def all_chunks(
    audit: audit_grpc.AuditServiceAsyncStub, home: Path, connection_id: str
) -> tuple[audit_pb.Recording, list[bytes]]:
    chunks: list[bytes] = []
    token = ""
    while True:
        page = await audit.ListRecordingChunks(
            audit_pb.ListRecordingChunksRequest(connection_id=connection_id, page_token=token),
            metadata=metadata(home),
            timeout=TIMEOUT_S,
        )
        chunks += page.chunks
        token = page.next_page_token
        if not token:
            return page.recording, chunks


async def watch(
    audit: audit_grpc.AuditServiceAsyncStub, home: Path, connection_id: str
) -> list[audit_pb.WatchRecordingResponse]:
    stream = audit.WatchRecording(
        audit_pb.WatchRecordingRequest(connection_id=connection_id),
        metadata=metadata(home),
        timeout=TIMEOUT_S * 2,
    )
    return [response async for response in stream]


async def recorded_session(org: Org, target_id: str, bob: Path) -> None:
    credentials = grpc.ssl_channel_credentials(org.cluster.ca_file.read_bytes())
    async with grpc.aio.secure_channel(org.cluster.server, credentials) as channel:
        broker = pb_grpc.BrokerServiceStub(channel)
        audit = audit_grpc.AuditServiceStub(channel)
        shell, connection_id = await open_shell(org, target_id, broker)
        await shell.type("echo recorded-$((6*7))\n")
        assert await shell.read_until(rb"recorded-42") is None
        # The agent cuts a chunk within a second: the recording exists while the shell runs.
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            listed = await audit.ListRecordings(
                audit_pb.ListRecordingsRequest(target_id=target_id),
                metadata=metadata(org.admin),
                timeout=TIMEOUT_S,
            )
            ids = [r.connection_id for r in listed.recordings]
            if connection_id in ids or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert connection_id in ids
        viewer = asyncio.ensure_future(watch(audit, org.admin, connection_id))
        await shell.type("exit\n")
        assert await shell.read_until(rb"(?!)") == 0  # the shell's exit status
        watched = await asyncio.wait_for(viewer, TIMEOUT_S)
        assert watched[0].recording.connection_id == connection_id
        live_chunks = [response.chunk for response in watched[1:]]

        deadline = time.monotonic() + TIMEOUT_S
        while True:
            recording, chunks = await all_chunks(audit, org.admin, connection_id)
            if recording.state != audit_pb.RECORDING_STATE_LIVE or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert recording.state == audit_pb.RECORDING_STATE_COMPLETE
        assert recording.input_recorded
        assert recording.subject.email == "alice@example.com"
        assert recording.target_user == ME
        public_key = keys.public_key_from_bytes(recording.agent_public_key)
        verified = verify_recording(chunks, public_key, require_complete=True)
        assert live_chunks == chunks  # the live view got the very chain that is stored
        output = "".join(e.data for e in verified.events if e.code == "o")
        typed = "".join(e.data for e in verified.events if e.code == "i")
        assert "recorded-42" in output
        assert "echo recorded-$((6*7))" in typed
        # Every command typed is an audit COMMAND event, searchable by its text.
        found = await audit.ListEvents(
            audit_pb.ListEventsRequest(
                filter=audit_pb.EventFilter(
                    kinds=[audit_pb.EVENT_KIND_COMMAND], text="RECORDED-", target_id=target_id
                )
            ),
            metadata=metadata(org.admin),
            timeout=TIMEOUT_S,
        )
        (event,) = found.events
        assert event.command.command == "echo recorded-$((6*7))"
        assert event.command.connection_id == connection_id
        assert event.actor.subject.email == "alice@example.com"
        # Bob is a user: alice's recording and commands are not his to read.
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await audit.ListRecordingChunks(
                audit_pb.ListRecordingChunksRequest(connection_id=connection_id),
                metadata=metadata(bob),
                timeout=TIMEOUT_S,
            )
        assert hidden.value.code() is grpc.StatusCode.NOT_FOUND
        bobs = await audit.ListRecordings(
            audit_pb.ListRecordingsRequest(), metadata=metadata(bob), timeout=TIMEOUT_S
        )
        assert list(bobs.recordings) == []
        commands = await audit.ListEvents(
            audit_pb.ListEventsRequest(
                filter=audit_pb.EventFilter(kinds=[audit_pb.EVENT_KIND_COMMAND])
            ),
            metadata=metadata(bob),
            timeout=TIMEOUT_S,
        )
        assert list(commands.events) == []


def test_a_shell_through_the_broker_is_recorded_verified_and_served(
    org: tuple[Org, str, Path],
) -> None:
    service, target_id, bob = org
    asyncio.run(recorded_session(service, target_id, bob))


async def recorded_exec(org: Org, target_id: str) -> None:
    out, code = await run_exec(org, target_id, "read x; echo exec-$x", b"piped\n")
    assert (out, code) == (b"exec-piped\n", 0)
    credentials = grpc.ssl_channel_credentials(org.cluster.ca_file.read_bytes())
    async with grpc.aio.secure_channel(org.cluster.server, credentials) as channel:
        audit = audit_grpc.AuditServiceStub(channel)
        # The command line is in the command log, carried signed by the command's recording.
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            found = await audit.ListEvents(
                audit_pb.ListEventsRequest(
                    filter=audit_pb.EventFilter(
                        kinds=[audit_pb.EVENT_KIND_COMMAND], text="echo exec-"
                    )
                ),
                metadata=metadata(org.admin),
                timeout=TIMEOUT_S,
            )
            if found.events or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        (event,) = found.events
        assert event.command.command == "read x; echo exec-$x"
        connection_id = event.command.connection_id
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            recording, chunks = await all_chunks(audit, org.admin, connection_id)
            if recording.state != audit_pb.RECORDING_STATE_LIVE or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        public_key = keys.public_key_from_bytes(recording.agent_public_key)
        verified = verify_recording(chunks, public_key, require_complete=True)
        assert "".join(e.data for e in verified.events if e.code == "o") == "exec-piped\n"
        assert "".join(e.data for e in verified.events if e.code == "i") == "piped\n"


def test_a_command_run_with_exec_is_recorded_and_logged(org: tuple[Org, str, Path]) -> None:
    service, target_id, _ = org
    asyncio.run(recorded_exec(service, target_id))


async def detached_shell(org: Org, target_id: str, script: str) -> str:
    """Start a shell as alice, type `script`, see the recording stored, leave the shell
    running detached; its connection id."""
    credentials = grpc.ssl_channel_credentials(org.cluster.ca_file.read_bytes())
    async with grpc.aio.secure_channel(org.cluster.server, credentials) as channel:
        shell, connection_id = await open_shell(org, target_id, pb_grpc.BrokerServiceStub(channel))
        await shell.type(script)
        assert await shell.read_until(rb"before-restart-2") is None
        audit = audit_grpc.AuditServiceStub(channel)
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                _, chunks = await all_chunks(audit, org.admin, connection_id)
            except grpc.aio.AioRpcError as error:  # its first chunk is under a second away
                if error.code() is not grpc.StatusCode.NOT_FOUND:
                    raise
                chunks = []
            if chunks or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert chunks, "no chunk stored before the restart"
        shell.leave()
        return connection_id


async def completed(org: Org, connection_id: str) -> tuple[audit_pb.Recording, list[bytes]]:
    credentials = grpc.ssl_channel_credentials(org.cluster.ca_file.read_bytes())
    async with grpc.aio.secure_channel(org.cluster.server, credentials) as channel:
        audit = audit_grpc.AuditServiceStub(channel)
        deadline = time.monotonic() + TIMEOUT_S * 2
        while True:
            recording, chunks = await all_chunks(audit, org.admin, connection_id)
            if recording.state != audit_pb.RECORDING_STATE_LIVE or time.monotonic() > deadline:
                return recording, chunks
            await asyncio.sleep(0.3)


def test_a_recording_continues_across_a_service_restart(org: tuple[Org, str, Path]) -> None:
    """The shell runs on, detached, while mrzapd restarts: what it prints meanwhile is queued by
    the agent and sent after it reconnects, and the new broker resumes the chain from the store."""
    service, target_id, _ = org
    script = "echo before-restart-$((1+1)); sleep 4; echo after-restart-$((2+2)); exit\n"
    connection_id = asyncio.run(detached_shell(service, target_id, script))
    service.restart_service()
    recording, chunks = asyncio.run(completed(service, connection_id))
    assert recording.state == audit_pb.RECORDING_STATE_COMPLETE
    public_key = keys.public_key_from_bytes(recording.agent_public_key)
    verified = verify_recording(chunks, public_key, require_complete=True)
    output = "".join(e.data for e in verified.events if e.code == "o")
    assert "before-restart-2" in output
    assert "after-restart-4" in output
