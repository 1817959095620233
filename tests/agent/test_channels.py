"""Channels end to end through a real broker: the agent's control loop, SYN checks, shells and
commands, frames sealed both ways, flow control, and what a tampering broker cannot do.

The broker runs on loopback over TLS (tests/broker/harness.py, with a policy-free grant issuer);
the agent is the real `ControlLoop` with `AgentChannels` in this process, running real processes
as the user the tests run as; the IdP is a real OIDC provider on loopback whose JWKS the agent
fetches itself. The client is driven with mrzap.handshake and mrzap.channel, as zli will be.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from agent._channels import DEFAULT_WINDOW, AgentChannels
from agent._config import AgentConfig, GrantKeyPin
from agent._control import ControlLoop
from agent._local_policy import LocalPolicy
from agent._pty import PtyShell
from agent._sessions import Sessions
from agent._verifier import SynHandler
from bastion.agent.v1 import agent_service_pb2 as agent_pb
from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from broker.testing import StaticGrantIssuer, user_caller
from mrzap import keys
from mrzap.channel import Direction, FrameOpener, FrameSealer
from mrzap.grant import GrantSigner
from mrzap.handshake import Action, build_syn, verify_reject, verify_synack
from mrzap.testing import TestIdentityProvider
from mrzap.timestamps import to_duration
from mrzap.verification import Reason
from tests.accounts import LOGIN
from tests.agent.test_control import eventually
from tests.broker.conftest import READ_TIMEOUT_S
from tests.broker.harness import Harness, running_harness

ME = LOGIN


@dataclasses.dataclass
class Setup:
    """A broker, an online agent of one target, and a logged-in client."""

    harness: Harness
    target_id: str
    idp: TestIdentityProvider
    sessions: Sessions
    loop: ControlLoop


@pytest_asyncio.fixture
async def setup(tmp_path: Path, idp: TestIdentityProvider) -> AsyncIterator[Setup]:
    session_key = keys.generate_signing_key()
    caller = user_caller(keys.public_key_bytes(session_key), issuer=idp.issuer)
    async with running_harness(tmp_path, caller=caller, max_queued=1024 * 1024) as harness:
        harness.session_key = session_key
        agent = harness.register()
        config = AgentConfig(
            server=f"127.0.0.1:{harness.port}",
            target_id=agent.target_id,
            org_id="org-1",
            name="web-1",
            grant_keys=(GrantKeyPin("svc-1", keys.public_key_bytes(harness.service_key)),),
            idp=idp.config(client_id="zli"),
            ca_pem=harness.tls.ca_cert.read_bytes(),
        )
        sessions = Sessions()
        local = LocalPolicy.build([ME], [], uid=os.getuid())
        channels = AgentChannels(SynHandler(config, agent.key, local), sessions)
        loop = ControlLoop(config, agent.key, channels=channels)
        stop = asyncio.Event()
        running = asyncio.ensure_future(loop.run(stop))
        try:
            await eventually(lambda: loop.online)
            yield Setup(harness, agent.target_id, idp, sessions, loop)
        finally:
            stop.set()
            await asyncio.wait_for(running, READ_TIMEOUT_S)
            await sessions.close_all()


class Client:
    """One client channel after the handshake: seals stdin, opens output."""

    def __init__(
        self,
        call: Any,  # noqa: ANN401 - grpc's call
        sealer: FrameSealer,
        opener: FrameOpener,
        synack: mrzap_pb2.SynAck | None = None,
    ) -> None:
        self.synack = synack
        self.call = call
        self.sealer = sealer
        self.opener = opener
        self._unacknowledged = 0

    async def send(self, message: mrzap_pb2.ChannelMessage) -> None:
        await self.call.write(pb.ChannelRequest(channel_frame=self.sealer.seal(message)))

    async def receive(self) -> mrzap_pb2.ChannelMessage | None:
        """The next message from the agent; None when the call ended."""
        response = await asyncio.wait_for(self.call.read(), READ_TIMEOUT_S)
        if response is grpc.aio.EOF:
            return None
        return self.opener.open(response.channel_frame)

    async def until_exit(self) -> tuple[bytes, bytes, mrzap_pb2.Exit]:
        """stdout, stderr and the exit, granting credit as a client does: once half the window
        is used (so a short output never makes it write after the agent ended the channel)."""
        out, err = bytearray(), bytearray()
        while (message := await self.receive()) is not None:
            kind = message.WhichOneof("message")
            if kind == "exit":
                # As zli does: half-close, or the broker holds the call open waiting for it.
                await self.call.done_writing()
                return bytes(out), bytes(err), message.exit
            data = message.stdout if kind == "stdout" else message.stderr
            (out if kind == "stdout" else err).extend(data)
            self._unacknowledged += len(data)
            if self._unacknowledged >= DEFAULT_WINDOW // 2:
                await self.grant(self._unacknowledged)
                self._unacknowledged = 0
        raise AssertionError(f"the channel ended without an exit; output so far {bytes(out)!r}")

    async def grant(self, count: int) -> None:
        await self.send(mrzap_pb2.ChannelMessage(window_update=mrzap_pb2.WindowUpdate(bytes=count)))


def pb_agent_close(message: str, *, retry_after_s: float) -> agent_pb.ControlResponse:
    """The broker's ControlClose asking the agent to come back after `retry_after_s`."""
    return agent_pb.ControlResponse(
        close=agent_pb.ControlClose(
            reason=agent_pb.CONTROL_CLOSE_REASON_UNSPECIFIED,
            message=message,
            retry_after=to_duration(retry_after_s),
        )
    )


async def connect(
    setup: Setup, verb: mrzap_pb2.Verb.ValueType, action: Action
) -> Client | mrzap_pb2.Reject:
    """OpenConnection, then the handshake through the broker: a Client, or the agent's Reject."""
    harness = setup.harness
    opened = await harness.open_connection(setup.target_id, verb, action.target_user)
    handshake = build_syn(
        session_key=harness.session_key,
        pk_token=setup.idp.pk_token(keys.public_key_bytes(harness.session_key)),
        signed_grant=opened.grant,
        channel_id=opened.channel_id,
        action=action,
    )
    call: Any = harness.stub.Channel()  # type: ignore[call-arg]
    await call.write(
        pb.ChannelRequest(
            open=pb.ChannelOpen(channel_id=opened.channel_id, syn=handshake.signed_syn)
        )
    )
    answer = await asyncio.wait_for(call.read(), READ_TIMEOUT_S)
    if answer.WhichOneof("frame") == "reject":
        return verify_reject(handshake, answer.reject)
    established = verify_synack(handshake, answer.syn_ack)
    return Client(
        call,
        FrameSealer(established.keys, opened.channel_id, Direction.CLIENT_TO_AGENT),
        FrameOpener(established.keys, opened.channel_id, Direction.AGENT_TO_CLIENT),
        established.synack,
    )


@dataclasses.dataclass
class Attached:
    """A client and what the agent's SYN-ACK reported."""

    client: Client
    replay: bytes


async def connect_with_result(
    setup: Setup, verb: mrzap_pb2.Verb.ValueType, action: Action
) -> tuple[Any, str]:
    """Like `connect`, for shells: (Client or Attached, the connection id from the SYN-ACK)."""
    client = await connect(setup, verb, action)
    assert isinstance(client, Client), client
    assert client.synack is not None
    result = client.synack.result
    if isinstance(action, mrzap_pb2.ShellAttach):
        return Attached(client, result.replay), result.connection_id
    return client, result.connection_id


async def connected(setup: Setup, verb: mrzap_pb2.Verb.ValueType, action: Action) -> Client:
    client = await connect(setup, verb, action)
    assert isinstance(client, Client), client
    return client


@pytest.mark.asyncio
async def test_exec_passes_stdin_stdout_stderr_and_the_exit_code(setup: Setup) -> None:
    command = 'read line; echo "got:$line"; echo oops >&2; exit 3'
    client = await connected(
        setup, mrzap_pb2.VERB_EXEC, mrzap_pb2.Exec(target_user=ME, command=command)
    )
    await client.send(mrzap_pb2.ChannelMessage(stdin=b"world\n"))
    await client.send(mrzap_pb2.ChannelMessage(end_of_input=mrzap_pb2.EndOfInput()))
    out, err, exit_ = await client.until_exit()
    assert (out, err, exit_.code) == (b"got:world\n", b"oops\n", 3)
    assert await asyncio.wait_for(client.call.code(), READ_TIMEOUT_S) is grpc.StatusCode.OK


@pytest.mark.asyncio
async def test_a_shell_runs_commands_and_reports_its_exit(setup: Setup) -> None:
    shell = mrzap_pb2.ShellOpen(target_user=ME, term="xterm", cols=80, rows=24)
    client = await connected(setup, mrzap_pb2.VERB_SHELL, shell)
    await client.send(mrzap_pb2.ChannelMessage(stdin=b"echo $((6*7)); exit 5\n"))
    out, _, exit_ = await client.until_exit()
    assert b"42" in out
    assert exit_.code == 5


@pytest.mark.asyncio
async def test_output_stops_at_the_clients_credit_and_resumes_with_more(setup: Setup) -> None:
    total = 3 * DEFAULT_WINDOW
    action = mrzap_pb2.Exec(target_user=ME, command=f"head -c {total} /dev/zero")
    client = await connected(setup, mrzap_pb2.VERB_EXEC, action)
    received = 0
    # Read until nothing more comes for a while; a read is never cancelled (that ends the call).
    pending = asyncio.ensure_future(client.call.read())
    while (await asyncio.wait({pending}, timeout=0.5))[0]:
        received += len(client.opener.open(pending.result().channel_frame).stdout)
        pending = asyncio.ensure_future(client.call.read())
    assert received == DEFAULT_WINDOW  # no window update was sent: exactly the initial credit
    await client.grant(received)
    first = client.opener.open((await pending).channel_frame).stdout
    out, _, exit_ = await client.until_exit()
    assert received + len(first) + len(out) == total
    assert exit_.code == 0


@pytest.mark.asyncio
async def test_clients_leaving_in_the_middle_of_output_leave_the_agent_online(
    setup: Setup,
) -> None:
    # The agent is mostly writing a frame when such a client goes. grpc.aio cancels a whole call
    # whose write is cancelled, so the control stream must not carry the leaving channel's
    # cancellation: no other connection may notice, and the agent never reconnects.
    for _ in range(10):
        action = mrzap_pb2.Exec(target_user=ME, command="yes")
        client = await connected(setup, mrzap_pb2.VERB_EXEC, action)
        received = 0
        while received < 2 * DEFAULT_WINDOW:
            message = await client.receive()
            assert message is not None
            received += len(message.stdout)
            await client.grant(len(message.stdout))
        client.call.cancel()
    after = await connected(
        setup, mrzap_pb2.VERB_EXEC, mrzap_pb2.Exec(target_user=ME, command="echo on")
    )
    out, _, exit_ = await after.until_exit()
    assert (out, exit_.code) == (b"on\n", 0)
    assert len(setup.harness.directory.connections) == 1


@pytest.mark.asyncio
async def test_a_flipped_ciphertext_byte_ends_the_channel_and_runs_nothing(
    setup: Setup, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    shell = mrzap_pb2.ShellOpen(target_user=ME, term="xterm", cols=80, rows=24)
    client = await connected(setup, mrzap_pb2.VERB_SHELL, shell)
    frame = client.sealer.seal(mrzap_pb2.ChannelMessage(stdin=f"touch {marker}\n".encode()))
    tampered = bytearray(frame.ciphertext)
    tampered[0] ^= 1
    frame.ciphertext = bytes(tampered)
    await client.call.write(pb.ChannelRequest(channel_frame=frame))
    while (message := await client.receive()) is not None:
        if message.WhichOneof("message") == "error":
            assert Reason.from_wire(message.error.code) is Reason.FRAME_AUTH_FAILED
            break
    else:
        raise AssertionError("no error from the agent")
    await asyncio.sleep(0.3)
    assert not marker.exists()


@pytest.mark.asyncio
async def test_a_user_the_agent_does_not_serve_is_rejected(setup: Setup) -> None:
    # The grant names that user; only the agent's own configuration refuses it.
    action = mrzap_pb2.Exec(target_user="root" if ME != "root" else "nobody", command="true")
    reject = await connect(setup, mrzap_pb2.VERB_EXEC, action)
    assert isinstance(reject, mrzap_pb2.Reject)
    assert Reason.from_wire(reject.code) is Reason.ACTION_TARGET_USER_NOT_ALLOWED
    assert len(setup.sessions) == 0


async def read_stdout_until(client: Client, wanted: bytes) -> bytes:
    """Shell output until `wanted` appears in it."""
    out = b""
    while wanted not in out:
        message = await client.receive()
        assert message is not None, f"the channel ended; output {out!r}"
        out += message.stdout
    return out


@pytest.mark.asyncio
async def test_a_shell_outlives_its_client_and_replays_on_reattach(setup: Setup) -> None:
    shell = mrzap_pb2.ShellOpen(target_user=ME, term="xterm", cols=80, rows=24)
    first = await connect_with_result(setup, mrzap_pb2.VERB_SHELL, shell)
    client, connection_id = first
    await client.send(mrzap_pb2.ChannelMessage(stdin=b"echo before-$((1+1))\n"))
    await read_stdout_until(client, b"before-2")
    client.call.cancel()  # the client goes away: the shell keeps running
    running = setup.sessions.get(connection_id)
    assert running is not None
    shell_session = running.session
    assert isinstance(shell_session, PtyShell)
    await eventually(lambda: not shell_session.attached)
    attach = mrzap_pb2.ShellAttach(target_user=ME, connection_id=connection_id, cols=100, rows=30)
    again, _ = await connect_with_result(setup, mrzap_pb2.VERB_SHELL, attach)
    assert b"before-2" in again.replay
    await again.client.send(mrzap_pb2.ChannelMessage(stdin=b"echo after-$((2+2)); exit 4\n"))
    out, _, exit_ = await again.client.until_exit()
    assert b"after-4" in out
    assert exit_.code == 4


async def left_shell(setup: Setup) -> tuple[PtyShell, str, list[tuple[str, str]]]:
    """A shell its client left (it runs on, detached), its connection id, and the list of
    (target id, connection id) the broker hears in ConnectionEnded from now on."""
    ended: list[tuple[str, str]] = []

    async def heard(target_id: str, connection_id: str) -> None:
        ended.append((target_id, connection_id))

    setup.harness.role.servicer.on_connection_ended = heard
    shell = mrzap_pb2.ShellOpen(target_user=ME, term="xterm", cols=80, rows=24)
    client, connection_id = await connect_with_result(setup, mrzap_pb2.VERB_SHELL, shell)
    running = setup.sessions.get(connection_id)
    assert running is not None
    shell_session = running.session
    assert isinstance(shell_session, PtyShell)
    client.call.cancel()
    await eventually(lambda: not shell_session.attached)
    return shell_session, connection_id, ended


@pytest.mark.asyncio
async def test_a_detached_shell_that_ends_is_reported_to_the_broker(setup: Setup) -> None:
    shell_session, connection_id, ended = await left_shell(setup)
    os.kill(shell_session.pid, signal.SIGKILL)  # it ends with no channel to carry the news
    await eventually(lambda: ended == [(setup.target_id, connection_id)])


@pytest.mark.asyncio
async def test_a_shell_that_ends_while_the_agent_is_offline_is_reported_when_it_is_back(
    setup: Setup,
) -> None:
    shell_session, connection_id, ended = await left_shell(setup)
    stream = setup.harness.role.agents.get(setup.target_id)
    assert stream is not None
    back_later = pb_agent_close("back in a second", retry_after_s=1.0)
    stream.send(back_later)
    await eventually(lambda: not setup.loop.online)
    os.kill(shell_session.pid, signal.SIGKILL)  # while nobody could hear of it
    await eventually(lambda: setup.loop.online)
    await eventually(lambda: ended == [(setup.target_id, connection_id)])


@pytest.mark.asyncio
async def test_a_revocation_ends_the_running_connection(setup: Setup) -> None:
    client = await connected(
        setup, mrzap_pb2.VERB_EXEC, mrzap_pb2.Exec(target_user=ME, command="sleep 30")
    )
    grant_id = setup.harness.issuer.issued[-1].grant_id
    revocation = await setup.harness.issuer.issue_revocation([grant_id], [])
    stream = setup.harness.role.agents.get(setup.target_id)
    assert stream is not None
    stream.send(agent_pb.ControlResponse(revocation=revocation.SerializeToString()))
    _, _, exit_ = await client.until_exit()
    assert exit_.signal != 0  # ended by the agent, not by the command


@pytest.mark.asyncio
async def test_a_revocation_under_an_unpinned_key_changes_nothing(setup: Setup) -> None:
    client = await connected(
        setup, mrzap_pb2.VERB_EXEC, mrzap_pb2.Exec(target_user=ME, command="sleep 1; exit 9")
    )
    forger = StaticGrantIssuer(GrantSigner(keys.generate_signing_key(), "svc-1"), {})
    grant_id = setup.harness.issuer.issued[-1].grant_id
    revocation = await forger.issue_revocation([grant_id], [])
    stream = setup.harness.role.agents.get(setup.target_id)
    assert stream is not None
    stream.send(agent_pb.ControlResponse(revocation=revocation.SerializeToString()))
    _, _, exit_ = await client.until_exit()
    assert exit_.code == 9  # the command ran to its end


@pytest.mark.asyncio
async def test_input_past_the_agents_credit_ends_the_channel(setup: Setup) -> None:
    client = await connected(
        setup, mrzap_pb2.VERB_EXEC, mrzap_pb2.Exec(target_user=ME, command="sleep 10")
    )
    chunk = b"x" * (32 * 1024)
    # The command reads nothing: the agent grants credit only for what the pipe took (far less
    # than a window), so three windows of input break flow control.
    for _ in range(3 * DEFAULT_WINDOW // len(chunk)):
        await client.send(mrzap_pb2.ChannelMessage(stdin=chunk))
    while (message := await client.receive()) is not None:
        if message.WhichOneof("message") == "error":
            assert Reason.from_wire(message.error.code) is Reason.TOO_LARGE
            break
    else:
        raise AssertionError("the agent did not end the channel")


@pytest.mark.asyncio
async def test_a_syn_relayed_on_another_channel_is_rejected_and_starts_nothing(
    setup: Setup,
) -> None:
    """A broker that splices a SYN onto another channel id gets a Reject (the frames' AAD would
    not match either); the relay here is bypassed by handing the agent the message directly."""
    harness = setup.harness
    opened = await harness.open_connection(setup.target_id, mrzap_pb2.VERB_EXEC, ME)
    handshake = build_syn(
        session_key=harness.session_key,
        pk_token=setup.idp.pk_token(keys.public_key_bytes(harness.session_key)),
        signed_grant=opened.grant,
        channel_id=opened.channel_id,
        action=mrzap_pb2.Exec(target_user=ME, command="true"),
    )
    stream = harness.role.agents.get(setup.target_id)
    assert stream is not None
    channel = harness.role.relay.open("spliced-channel", setup.target_id, handshake.signed_syn)
    answer = await asyncio.wait_for(channel.next(), READ_TIMEOUT_S)
    assert isinstance(answer, pb.ChannelResponse)
    reject = verify_reject(handshake, answer.reject)
    assert Reason.from_wire(reject.code) is Reason.MALFORMED
    assert "another channel" in reject.message
    assert len(setup.sessions) == 0


@pytest.mark.asyncio
async def test_reordered_frames_end_the_channel_and_run_nothing(
    setup: Setup, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    shell = mrzap_pb2.ShellOpen(target_user=ME, term="xterm", cols=80, rows=24)
    client = await connected(setup, mrzap_pb2.VERB_SHELL, shell)
    first = client.sealer.seal(mrzap_pb2.ChannelMessage(stdin=f"touch {marker}".encode()))
    second = client.sealer.seal(mrzap_pb2.ChannelMessage(stdin=b"\n"))
    for frame in (second, first):  # as a broker that reorders would deliver them
        await client.call.write(pb.ChannelRequest(channel_frame=frame))
    while (message := await client.receive()) is not None:
        if message.WhichOneof("message") == "error":
            assert Reason.from_wire(message.error.code) is Reason.FRAME_OUT_OF_ORDER
            break
    else:
        raise AssertionError("no error from the agent")
    await asyncio.sleep(0.3)
    assert not marker.exists()
