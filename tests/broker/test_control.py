"""The broker's control stream over real gRPC and TLS, against the in-memory directory.

Every refusal is checked for its ControlClose, its status, its audit record and that it changed
nothing about the target.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from bastion.agent.v1 import agent_service_pb2 as pb
from broker.testing import MemoryDirectory
from mrzap import keys

from .conftest import Agent, MemoryBroker, RawStream, agent_auth, start_broker

Register = Callable[[], Agent]


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until `check()` holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_valid_agent_is_welcomed_and_goes_online(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    agent = register()
    stream = RawStream(channel)
    welcome = await stream.authenticate(agent)
    assert welcome.broker_id == broker.role.config.broker_id
    assert welcome.keepalive_interval.ToMilliseconds() == 400
    assert broker.directory.targets[agent.target_id].state == "ONLINE"
    assert broker.role.agents.get(agent.target_id) is not None
    (connected,) = broker.directory.connections
    assert connected[:2] == (agent.target_id, broker.role.config.broker_id)
    assert connected[2].startswith("ipv4:127.0.0.1:")
    assert broker.directory.refusals == []


@pytest.mark.asyncio
async def test_agent_close_ends_the_stream_and_the_target_goes_offline(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    agent = register()
    stream = RawStream(channel)
    await stream.authenticate(agent)
    await stream.send(
        pb.ControlRequest(close=pb.ControlClose(reason=pb.CONTROL_CLOSE_REASON_SHUTDOWN))
    )
    await stream.call.done_writing()
    assert await stream.call.code() is grpc.StatusCode.OK
    await eventually(lambda: broker.directory.targets[agent.target_id].state == "OFFLINE")
    (ended,) = broker.directory.disconnections
    assert ended == (agent.target_id, broker.role.config.broker_id, ended[2])
    assert "SHUTDOWN" in ended[2]
    assert agent.target_id not in broker.role.agents


@pytest.mark.asyncio
async def test_broker_probes_and_batches_last_seen(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    """Keepalives are answered by the agent; last_seen is written per flush, not per keepalive."""
    agent = register()
    stream = RawStream(channel)
    await stream.authenticate(agent)
    answered = 0
    for _ in range(3):  # the broker probes within an interval; the agent answers each probe
        probe = await stream.read(timeout_s=1.0)
        assert probe.WhichOneof("frame") == "keepalive"
        await stream.send(pb.ControlRequest(keepalive=pb.Keepalive()))
        answered += 1
    for _ in range(40):  # a burst of keepalives from the agent
        await stream.send(pb.ControlRequest(keepalive=pb.Keepalive()))
    await eventually(lambda: bool(broker.directory.seen_batches))
    await asyncio.sleep(0.4)
    batches = broker.directory.seen_batches
    assert all(ids == {agent.target_id} for ids, _ in batches)
    assert len(batches) <= 5 < answered + 40
    assert broker.directory.targets[agent.target_id].last_seen is not None


@pytest.mark.asyncio
async def test_deleted_targets_stream_ends_at_the_next_flush(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    """Deleting a target in the registry ends its live stream: its key no longer counts."""
    agent = register()
    stream = RawStream(channel)
    await stream.authenticate(agent)
    del broker.directory.targets[agent.target_id]
    # Bounds with room for a busy machine: the next flush is 0.3 s away.
    deadline = asyncio.get_running_loop().time() + 15.0
    message = await stream.read(timeout_s=5.0)
    while message.WhichOneof("frame") != "close":  # keep answering probes until the close
        assert asyncio.get_running_loop().time() < deadline, "the stream was not ended"
        await stream.send(pb.ControlRequest(keepalive=pb.Keepalive()))
        message = await stream.read(timeout_s=5.0)
    assert message.close.reason == pb.CONTROL_CLOSE_REASON_TARGET_DELETED
    assert message.close.message == "the target was deleted"


@pytest.mark.asyncio
async def test_silent_agent_is_ended_after_three_intervals(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    agent = register()
    stream = RawStream(channel)
    await stream.authenticate(agent)
    started = asyncio.get_running_loop().time()
    while True:  # never answer the probes
        message = await stream.read(timeout_s=8.0)
        if message.WhichOneof("frame") == "close":
            break
        assert message.WhichOneof("frame") == "keepalive"
    # Not before three intervals of silence (0.4 s each); the upper bound only says "ended",
    # with room for a busy machine.
    assert 1.2 <= asyncio.get_running_loop().time() - started < 8.0
    assert "no keepalive" in message.close.message
    await eventually(lambda: broker.directory.targets[agent.target_id].state == "OFFLINE")


@pytest.mark.asyncio
async def test_newer_stream_supersedes_the_older(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    agent = register()
    older, newer = RawStream(channel), RawStream(channel)
    await older.authenticate(agent)
    await newer.authenticate(agent)
    close = await older.ends_ok()
    assert close.reason == pb.CONTROL_CLOSE_REASON_SUPERSEDED
    await asyncio.sleep(0.1)
    # The superseded stream's end is not a disconnection: the target is online on the newer one.
    assert broker.directory.disconnections == []
    assert broker.directory.targets[agent.target_id].state == "ONLINE"
    assert len(broker.directory.connections) == 2
    await newer.send(pb.ControlRequest(close=pb.ControlClose()))
    await eventually(lambda: broker.directory.targets[agent.target_id].state == "OFFLINE")


@pytest.mark.asyncio
async def test_shutdown_tells_agents(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    stream = RawStream(channel)
    await stream.authenticate(register())
    await broker.role.shutdown()
    while (message := await stream.read()).WhichOneof("frame") == "keepalive":
        pass
    assert message.close.reason == pb.CONTROL_CLOSE_REASON_SHUTDOWN
    assert await stream.call.code() is grpc.StatusCode.OK
    # A draining broker does not report each stream's end: its agents are back within seconds,
    # and the registry's offline timeout catches those that are not.
    assert broker.directory.disconnections == []
    assert len(broker.role.agents) == 0


# --- refusals: each is audited, ends with ControlClose and a status, and changes nothing -------


async def refuse(
    broker: MemoryBroker, stream: RawStream, *agents: Agent
) -> tuple[pb.ControlClose, grpc.StatusCode, str, tuple[str, str, str]]:
    close, code, details = await stream.refused()
    await eventually(lambda: bool(broker.directory.refusals))
    (refusal,) = broker.directory.refusals
    assert refusal[1] == close.message == details
    assert refusal[2].startswith("ipv4:127.0.0.1:")
    for agent in agents:  # nothing changed
        target = broker.directory.targets[agent.target_id]
        assert (target.state, target.last_seen) == ("REGISTERED", None)
    assert broker.directory.connections == []
    assert len(broker.role.agents) == 0
    return close, code, details, refusal


@pytest.mark.asyncio
async def test_unknown_target_is_refused(broker: MemoryBroker, channel: grpc.aio.Channel) -> None:
    stream = RawStream(channel)
    nonce = await stream.challenge()
    stranger = keys.generate_signing_key()
    await stream.send(pb.ControlRequest(agent_auth=agent_auth(stranger, "no-such-target", nonce)))
    close, code, details, refusal = await refuse(broker, stream)
    assert close.reason == pb.CONTROL_CLOSE_REASON_TARGET_DELETED
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "unknown target 'no-such-target'" in details
    assert refusal[0] == ""


@pytest.mark.asyncio
async def test_bad_signature_is_refused(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    agent = register()
    stream = RawStream(channel)
    nonce = await stream.challenge()
    forger = keys.generate_signing_key()
    await stream.send(pb.ControlRequest(agent_auth=agent_auth(forger, agent.target_id, nonce)))
    close, code, details, refusal = await refuse(broker, stream, agent)
    assert close.reason == pb.CONTROL_CLOSE_REASON_AUTH_FAILED
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "does not verify" in details
    assert refusal[0] == agent.target_id


@pytest.mark.asyncio
async def test_claiming_another_targets_id_is_refused(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    victim, claimant = register(), register()
    stream = RawStream(channel)
    nonce = await stream.challenge()
    await stream.send(
        pb.ControlRequest(agent_auth=agent_auth(claimant.key, victim.target_id, nonce))
    )
    close, code, _, refusal = await refuse(broker, stream, victim, claimant)
    assert close.reason == pb.CONTROL_CLOSE_REASON_AUTH_FAILED
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert refusal[0] == victim.target_id


@pytest.mark.asyncio
async def test_wrong_nonce_is_refused(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    agent = register()
    stream = RawStream(channel)
    nonce = await stream.challenge()
    replayed = bytes(b ^ 1 for b in nonce)  # e.g. an answer recorded on another stream
    await stream.send(
        pb.ControlRequest(agent_auth=agent_auth(agent.key, agent.target_id, replayed))
    )
    close, code, details, _ = await refuse(broker, stream, agent)
    assert close.reason == pb.CONTROL_CLOSE_REASON_AUTH_FAILED
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "wrong nonce" in details


@pytest.mark.asyncio
@pytest.mark.parametrize("skew_s", [-180.0, 180.0])
async def test_stale_or_future_timestamp_is_refused(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register, skew_s: float
) -> None:
    agent = register()
    stream = RawStream(channel)
    nonce = await stream.challenge()
    signed = agent_auth(agent.key, agent.target_id, nonce, skew_s=skew_s)
    await stream.send(pb.ControlRequest(agent_auth=signed))
    close, code, details, _ = await refuse(broker, stream, agent)
    assert close.reason == pb.CONTROL_CLOSE_REASON_AUTH_FAILED
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert f"{skew_s:+.0f} s off" in details


@pytest.mark.asyncio
async def test_timestamp_within_the_skew_is_accepted(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    agent = register()
    stream = RawStream(channel)
    nonce = await stream.challenge()
    signed = agent_auth(agent.key, agent.target_id, nonce, skew_s=-100.0)
    await stream.send(pb.ControlRequest(agent_auth=signed))
    assert (await stream.read()).WhichOneof("frame") == "welcome"


@pytest.mark.asyncio
async def test_first_message_must_be_agent_auth(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    agent = register()
    stream = RawStream(channel)
    await stream.challenge()
    await stream.send(pb.ControlRequest(keepalive=pb.Keepalive()))
    close, code, details, _ = await refuse(broker, stream, agent)
    assert close.reason == pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "first message must be agent_auth, not keepalive" in details


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xff\xff\xff", "not a ControlRequest"),
        (pb.ControlRequest(agent_auth=b"\x0a\xff").SerializeToString(), "not a signed AgentAuth"),
    ],
    ids=["not-protobuf", "not-signed"],
)
async def test_malformed_message_is_refused(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register, raw: bytes, expected: str
) -> None:
    agent = register()
    stream = RawStream(channel)
    await stream.challenge()
    await stream.send(raw)
    close, code, details, _ = await refuse(broker, stream, agent)
    assert close.reason == pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in details


@pytest.mark.asyncio
async def test_oversized_message_is_refused(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    agent = register()
    stream = RawStream(channel)
    nonce = await stream.challenge()
    signed = agent_auth(agent.key, agent.target_id, nonce)
    big = pb.ControlRequest(agent_auth=signed + b"\x00" * (300 * 1024))
    await stream.send(big)
    close, code, details, _ = await refuse(broker, stream, agent)
    assert close.reason == pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the limit of 262144" in details


@pytest.mark.asyncio
async def test_huge_message_never_reaches_the_broker(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register
) -> None:
    """gRPC's own limit stops a message far beyond the stream's limit before it is buffered."""
    agent = register()
    stream = RawStream(channel)
    await stream.challenge()
    await stream.send(pb.ControlRequest(recording_chunk=b"\x00" * (2 * 1024 * 1024)))
    code = await asyncio.wait_for(stream.call.code(), 5.0)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert broker.directory.targets[agent.target_id].state == "REGISTERED"
    assert len(broker.role.agents) == 0


@pytest.mark.asyncio
async def test_agent_that_never_answers_is_refused(
    tmp_path: Path, directory: MemoryDirectory
) -> None:
    """An unauthenticated stream cannot stay open: it must answer within auth_timeout_s."""
    running = await start_broker(tmp_path / "tls", directory, auth_timeout_s=0.3)
    try:
        credentials = grpc.ssl_channel_credentials(running.tls.ca_cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", credentials) as channel:
            stream = RawStream(channel)
            await stream.challenge()
            close, code, details, _ = await refuse(running, stream)
            assert close.reason == pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR
            assert code is grpc.StatusCode.INVALID_ARGUMENT
            assert "no agent_auth within 0.3 s" in details
    finally:
        await running.role.shutdown()
        await running.server.stop(0)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "request_",
    [
        pb.ControlRequest(agent_auth=b"again"),
        pb.ControlRequest(channel_close=pb.ChannelClose(channel_id="nope")),
        pb.ControlRequest(),
    ],
    ids=["second-auth", "unknown-channel", "empty"],
)
async def test_protocol_errors_after_welcome_end_the_stream(
    broker: MemoryBroker, channel: grpc.aio.Channel, register: Register, request_: pb.ControlRequest
) -> None:
    agent = register()
    stream = RawStream(channel)
    await stream.authenticate(agent)
    await stream.send(request_)
    while (message := await stream.read()).WhichOneof("frame") == "keepalive":
        pass
    assert message.close.reason == pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR
    assert await stream.call.code() is grpc.StatusCode.INVALID_ARGUMENT
    await eventually(lambda: broker.directory.targets[agent.target_id].state == "OFFLINE")
    (refusal,) = broker.directory.refusals
    assert refusal[0] == agent.target_id
