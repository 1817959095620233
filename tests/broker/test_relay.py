"""The broker's client side over real gRPC/TLS on loopback: OpenConnection, then Channel relayed
to a raw agent control stream that can send anything.

The policy and auth roles are replaced by `StaticGrantIssuer` and a fixed caller (see
tests/broker/harness.py): these tests are about what the broker relays, to whom, and its bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from bastion.agent.v1 import agent_service_pb2 as agent_pb
from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.broker.v1 import broker_service_pb2_grpc as broker_grpc
from bastion.mrzap.v1 import mrzap_pb2
from broker import BrokerConfig, BrokerRole, PendingChannels, RecordingIntake, server_options
from broker.testing import MemoryDirectory, user_caller
from mrzap import keys
from mrzap.errors import NotFound

from .conftest import READ_TIMEOUT_S, Agent, RawStream
from .harness import MAX_QUEUED, Harness, running_harness


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_harness(tmp_path) as running:
        yield running


async def read_until(stream: RawStream, kind: str) -> agent_pb.ControlResponse:
    """The next message of `kind` from the broker, skipping keepalives."""
    while True:
        message = await stream.read()
        if message.WhichOneof("frame") == kind:
            return message
        assert message.WhichOneof("frame") == "keepalive", message


async def next_response(call: Any) -> pb.ChannelResponse:  # noqa: ANN401 - grpc's call
    message = await asyncio.wait_for(call.read(), READ_TIMEOUT_S)
    assert message is not grpc.aio.EOF, "the broker ended the channel"
    assert isinstance(message, pb.ChannelResponse)
    return message


async def status(call: Any) -> tuple[grpc.StatusCode, str]:  # noqa: ANN401 - grpc's call
    # As zli does once the process ended: half-close, or the broker holds an orderly call open
    # (bounded) waiting for it.
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await call.done_writing()
    code = await asyncio.wait_for(call.code(), READ_TIMEOUT_S)
    return code, await call.details()


async def drain(call: Any) -> None:  # noqa: ANN401 - grpc's call
    """Read the call to its end."""
    while await asyncio.wait_for(call.read(), READ_TIMEOUT_S) is not grpc.aio.EOF:
        pass


def frame(seq: int, payload: bytes) -> mrzap_pb2.Frame:
    return mrzap_pb2.Frame(seq=seq, ciphertext=payload)


async def open_channel(harness: Harness, stream: RawStream, agent: Agent) -> tuple[Any, str, bytes]:
    """A Channel call whose SYN reached the agent; (call, channel id, SYN bytes)."""
    opened = await harness.open_connection(agent.target_id)
    syn = harness.syn(opened)
    call: Any = harness.stub.Channel()  # type: ignore[call-arg]
    await call.write(pb.ChannelRequest(open=pb.ChannelOpen(channel_id=opened.channel_id, syn=syn)))
    got = await read_until(stream, "channel_open")
    assert got.channel_open.channel_id == opened.channel_id
    assert got.channel_open.syn == syn  # unchanged, byte for byte
    return call, opened.channel_id, syn


async def answered_channel(
    harness: Harness, stream: RawStream, agent: Agent
) -> tuple[Any, str, bytes]:
    """A Channel call that the agent answered with a SYN-ACK; (call, channel id, SYN bytes)."""
    call, channel_id, syn = await open_channel(harness, stream, agent)
    await stream.send(
        agent_pb.ControlRequest(
            channel_answer=agent_pb.ChannelAnswer(channel_id=channel_id, syn_ack=b"synack")
        )
    )
    await next_response(call)
    return call, channel_id, syn


@pytest.mark.asyncio
async def test_open_connection_returns_the_grant_and_the_agents_key(harness: Harness) -> None:
    agent = harness.register()
    opened = await harness.open_connection(agent.target_id)
    grant = mrzap_pb2.Grant.FromString(opened.grant.payload)
    assert opened.agent_public_key == keys.public_key_bytes(agent.key)
    assert grant.target_public_key == opened.agent_public_key
    assert grant.upk == keys.public_key_bytes(harness.session_key)
    assert opened.channel_id


@pytest.mark.asyncio
async def test_a_denied_request_gets_no_grant_and_says_why(harness: Harness) -> None:
    agent = harness.register()
    harness.issuer.denial = "alice may not use web-1 on Sundays"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.open_connection(agent.target_id)
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "Sundays" in (raised.value.details() or "")
    assert harness.issuer.issued == []


@pytest.mark.asyncio
async def test_handshake_and_frames_are_relayed_unchanged_both_ways(harness: Harness) -> None:
    agent, stream = await harness.online()
    call, channel_id, _ = await open_channel(harness, stream, agent)
    await stream.send(
        agent_pb.ControlRequest(
            channel_answer=agent_pb.ChannelAnswer(channel_id=channel_id, syn_ack=b"signed-synack")
        )
    )
    assert (await next_response(call)).syn_ack == b"signed-synack"
    await call.write(pb.ChannelRequest(channel_frame=frame(0, b"c2a-0")))
    relayed = await read_until(stream, "channel_frame")
    assert relayed.channel_frame == agent_pb.ChannelFrame(
        channel_id=channel_id, frame=frame(0, b"c2a-0")
    )
    for seq in range(3):
        await stream.send(
            agent_pb.ControlRequest(
                channel_frame=agent_pb.ChannelFrame(
                    channel_id=channel_id, frame=frame(seq, b"a2c-%d" % seq)
                )
            )
        )
    for seq in range(3):
        assert (await next_response(call)).channel_frame == frame(seq, b"a2c-%d" % seq)
    await stream.send(
        agent_pb.ControlRequest(
            channel_close=agent_pb.ChannelClose(channel_id=channel_id, reason="exited")
        )
    )
    assert (await status(call))[0] is grpc.StatusCode.OK
    assert len(harness.role.relay) == 0


@pytest.mark.asyncio
async def test_a_reject_is_relayed_and_the_call_ends_ok(harness: Harness) -> None:
    agent, stream = await harness.online()
    call, channel_id, _ = await open_channel(harness, stream, agent)
    await stream.send(
        agent_pb.ControlRequest(
            channel_answer=agent_pb.ChannelAnswer(channel_id=channel_id, reject=b"signed-reject")
        )
    )
    assert (await next_response(call)).reject == b"signed-reject"
    assert (await status(call))[0] is grpc.StatusCode.OK


@pytest.mark.asyncio
async def test_a_channel_id_is_single_use(harness: Harness) -> None:
    agent, stream = await harness.online()
    call, channel_id, syn = await open_channel(harness, stream, agent)
    again: Any = harness.stub.Channel()  # type: ignore[call-arg]
    await again.write(pb.ChannelRequest(open=pb.ChannelOpen(channel_id=channel_id, syn=syn)))
    assert (await status(again))[0] is grpc.StatusCode.NOT_FOUND
    call.cancel()


@pytest.mark.asyncio
async def test_another_user_cannot_use_a_channel_id(harness: Harness) -> None:
    agent, _ = await harness.online()
    opened = await harness.open_connection(agent.target_id)
    harness.callers.append(user_caller(keys.public_key_bytes(harness.session_key), subject="eve"))
    call: Any = harness.stub.Channel()  # type: ignore[call-arg]
    await call.write(
        pb.ChannelRequest(
            open=pb.ChannelOpen(channel_id=opened.channel_id, syn=harness.syn(opened))
        )
    )
    assert (await status(call))[0] is grpc.StatusCode.NOT_FOUND


@pytest.mark.asyncio
async def test_a_syn_for_another_channel_id_is_refused(harness: Harness) -> None:
    agent, _ = await harness.online()
    opened = await harness.open_connection(agent.target_id)
    call: Any = harness.stub.Channel()  # type: ignore[call-arg]
    syn = harness.syn(opened, channel_id="another-channel")
    await call.write(pb.ChannelRequest(open=pb.ChannelOpen(channel_id=opened.channel_id, syn=syn)))
    code, details = await status(call)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "another channel id" in details


@pytest.mark.asyncio
async def test_an_offline_target_is_unavailable(harness: Harness) -> None:
    agent = harness.register()
    opened = await harness.open_connection(agent.target_id)
    call: Any = harness.stub.Channel()  # type: ignore[call-arg]
    await call.write(
        pb.ChannelRequest(
            open=pb.ChannelOpen(channel_id=opened.channel_id, syn=harness.syn(opened))
        )
    )
    code, details = await status(call)
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "offline" in details


@pytest.mark.asyncio
async def test_losing_the_agent_ends_the_channel_unavailable(harness: Harness) -> None:
    agent, stream = await harness.online()
    call, _, _ = await answered_channel(harness, stream, agent)
    stream.call.cancel()
    assert (await status(call))[0] is grpc.StatusCode.UNAVAILABLE


class StalledIntake:
    """A recording intake whose store of a chunk waits until the test lets it go."""

    def __init__(self) -> None:
        self.storing = asyncio.Event()
        self.go = asyncio.Event()

    async def receive(self, _target_id: str, _data: bytes, _compressed: bool = False) -> bool:
        self.storing.set()
        await self.go.wait()
        return True


@pytest.mark.asyncio
async def test_losing_the_agent_while_a_chunk_is_stored_still_ends_the_channel(
    tmp_path: Path,
) -> None:
    """The stream's end first stores what the agent sent, and grpc.aio cancels the stream's
    handler meanwhile (its call is over): the channels end all the same, and at once."""
    intake = StalledIntake()

    def wiring(
        config: BrokerConfig, directory: MemoryDirectory, _issuer: object
    ) -> tuple[BrokerRole, dict[str, Any]]:
        return BrokerRole(config, directory, recordings=cast(RecordingIntake, intake)), {}

    async with running_harness(tmp_path, wiring=wiring) as harness:
        agent, stream = await harness.online()
        call, _, _ = await answered_channel(harness, stream, agent)
        await stream.send(agent_pb.ControlRequest(recording_chunk=b"a chunk"))
        await asyncio.wait_for(intake.storing.wait(), READ_TIMEOUT_S)
        stream.call.cancel()
        try:
            assert (await status(call))[0] is grpc.StatusCode.UNAVAILABLE
        finally:
            intake.go.set()  # the chunk is stored, and the stream's end finishes


@pytest.mark.asyncio
async def test_a_client_leaving_tells_the_agent(harness: Harness) -> None:
    agent, stream = await harness.online()
    call, channel_id, _ = await open_channel(harness, stream, agent)
    call.cancel()
    close = await read_until(stream, "channel_close")
    assert close.channel_close.channel_id == channel_id


@pytest.mark.asyncio
async def test_an_agent_ignoring_flow_control_loses_the_channel(harness: Harness) -> None:
    agent, stream = await harness.online()
    call, channel_id, _ = await open_channel(harness, stream, agent)
    await stream.send(
        agent_pb.ControlRequest(
            channel_answer=agent_pb.ChannelAnswer(channel_id=channel_id, syn_ack=b"synack")
        )
    )
    # The client reads nothing: once gRPC's own buffers are full, what the agent sends stays
    # queued at the broker.
    chunk = b"x" * (60 * 1024)
    for seq in range(4 * 1024 * 1024 // len(chunk)):
        await stream.send(
            agent_pb.ControlRequest(
                channel_frame=agent_pb.ChannelFrame(channel_id=channel_id, frame=frame(seq, chunk))
            )
        )
    close = await read_until(stream, "channel_close")
    assert close.channel_close.channel_id == channel_id
    assert "flow control" in close.channel_close.reason
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await drain(call)
    assert ended.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["frame-before-answer", "second-answer", "other-agents-channel"])
async def test_agent_channel_violations_end_its_stream(harness: Harness, kind: str) -> None:
    agent, stream = await harness.online()
    call, channel_id, _ = await open_channel(harness, stream, agent)
    answer = agent_pb.ControlRequest(
        channel_answer=agent_pb.ChannelAnswer(channel_id=channel_id, syn_ack=b"synack")
    )
    offender = stream
    if kind == "frame-before-answer":
        message = agent_pb.ControlRequest(
            channel_frame=agent_pb.ChannelFrame(channel_id=channel_id, frame=frame(0, b"early"))
        )
    elif kind == "second-answer":
        await stream.send(answer)
        message = answer
    else:
        _, offender = await harness.online()
        message = answer
    await offender.send(message)
    close = await read_until(offender, "close")
    assert close.close.reason == agent_pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR
    call.cancel()


def test_a_channel_id_expires_with_its_grants_start_by() -> None:
    now = [1000.0]
    pending = PendingChannels(clock=lambda: now[0])
    channel_id = pending.issue("user-1", "target-1", expires_at=1060.0)
    now[0] = 1060.0
    with pytest.raises(NotFound):
        pending.take(channel_id, "user-1")
    fresh = pending.issue("user-1", "target-1", expires_at=1120.0)
    assert len(pending) == 1  # the expired id was forgotten
    assert pending.take(fresh, "user-1") == "target-1"


@pytest.mark.asyncio
async def test_a_second_open_ends_the_channel_for_both_sides(harness: Harness) -> None:
    agent, stream = await harness.online()
    call, channel_id, syn = await answered_channel(harness, stream, agent)
    await call.write(pb.ChannelRequest(open=pb.ChannelOpen(channel_id=channel_id, syn=syn)))
    close = await read_until(stream, "channel_close")
    assert close.channel_close.channel_id == channel_id
    assert (await status(call))[0] is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.asyncio
async def test_a_superseded_stream_ends_its_channels_even_if_it_cannot_be_written(
    harness: Harness,
) -> None:
    """An agent that reconnects over a new connection (a NAT rebinding, say) may leave its old
    connection unwritable: the broker cannot even send that stream its ControlClose. The old
    stream's channels must still end at once, not when TCP finally gives up."""
    agent = harness.register()
    async with harness.connection() as old_connection:
        older = RawStream(old_connection)
        await older.authenticate(agent)
        idle, _, _ = await answered_channel(harness, older, agent)  # like `zli exec -- sleep 300`
        busy, _, _ = await answered_channel(harness, older, agent)

        # The old stream reads no more: once HTTP/2 flow control stops the broker writing to
        # it, the busy client's frames queue up at the broker until the relay stops reading.
        async def flood() -> None:
            for seq in range(10_000):
                await busy.write(pb.ChannelRequest(channel_frame=frame(seq, b"x" * 16_384)))

        loop = asyncio.get_running_loop()
        writer = loop.create_task(flood())
        deadline = loop.time() + READ_TIMEOUT_S
        while max(channel.queued_to_agent for channel in harness.role.relay) < MAX_QUEUED:
            assert loop.time() < deadline, "the old stream's writes never backed up"
            await asyncio.sleep(0.05)

        newer = RawStream(harness.channel)
        await newer.authenticate(agent)
        assert await asyncio.wait_for(idle.code(), READ_TIMEOUT_S) is grpc.StatusCode.UNAVAILABLE
        assert "lost the target's agent" in await idle.details()
        # The busy client's write in flight makes grpcio end its call with INTERNAL.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await asyncio.wait_for(writer, READ_TIMEOUT_S)


class SilentProxy:
    """A TCP proxy on loopback that can go silent: it stops passing bytes either way but keeps
    both connections open, as a peer behind a NAT that forgot the mapping."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._pumps: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; the port to connect to."""
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def silence(self) -> None:
        """Stop passing bytes; the connections stay open."""
        for pump in self._pumps:
            pump.cancel()

    async def close(self) -> None:
        """Close both ends of every connection."""
        self.silence()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self._target_port
        )
        self._writers += [writer, upstream_writer]
        loop = asyncio.get_running_loop()
        self._pumps += [
            loop.create_task(_pump(reader, upstream_writer)),
            loop.create_task(_pump(upstream_reader, writer)),
        ]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


@pytest.mark.asyncio
async def test_a_client_that_went_silent_is_dropped_and_the_agent_told(tmp_path: Path) -> None:
    """Keepalive pings find a client whose connection went silent without closing: the broker
    drops it, and the agent hears that the client left (a shell would stay attached to nobody)."""
    options = server_options(keepalive_time_ms=500, keepalive_timeout_ms=500)
    async with running_harness(tmp_path, options=options) as harness:
        agent, stream = await harness.online()
        proxy = SilentProxy(harness.port)
        port = await proxy.start()
        try:
            async with harness.connection(port) as connection:
                harness.stub = broker_grpc.BrokerServiceStub(connection)
                _, channel_id, _ = await answered_channel(harness, stream, agent)
                proxy.silence()
                # Pinged after 0.5 s of quiet, dropped 0.5 s later; 10 s is room for a busy machine.
                close = await asyncio.wait_for(read_until(stream, "channel_close"), 10.0)
                assert close.channel_close.channel_id == channel_id
                assert "client left" in close.channel_close.reason
        finally:
            await proxy.close()
