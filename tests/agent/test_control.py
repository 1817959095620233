"""The agent's control loop against a real broker on loopback (gRPC over TLS).

The broker's registry is the in-memory directory here; the end-to-end tests use the real one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.duration_pb2 import Duration

from agent import AgentConfig, AgentStopped, Backoff, ControlLoop
from bastion.agent.v1 import agent_service_pb2 as pb
from broker.testing import MemoryDirectory
from mrzap import keys
from mrzap.config import IdpConfig
from mrzap.tls import ensure_server_tls

from ..broker.conftest import MemoryBroker, start_broker


def agent_config(port: int, ca_pem: bytes, target_id: str) -> AgentConfig:
    return AgentConfig(
        server=f"127.0.0.1:{port}",
        target_id=target_id,
        org_id="org",
        name="test",
        grant_keys=(),
        idp=IdpConfig(issuer="https://idp.example.com", client_id="zli"),
        ca_pem=ca_pem,
    )


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class RunningAgent:
    """A ControlLoop running as a task."""

    def __init__(self, config: AgentConfig, key: Ed25519PrivateKey, backoff: Backoff) -> None:
        self.loop = ControlLoop(config, key, backoff=backoff)
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(self.loop.run(self.stop))

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5.0)


@pytest_asyncio.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MemoryBroker]:
    running = await start_broker(
        tmp_path / "tls", MemoryDirectory(), keepalive_interval_s=0.3, seen_flush_interval_s=0.2
    )
    yield running
    await running.role.shutdown()
    await running.server.stop(0)


def registered(broker: MemoryBroker) -> tuple[AgentConfig, Ed25519PrivateKey]:
    key = keys.generate_signing_key()
    target_id = str(uuid.uuid4())
    broker.directory.add(target_id, keys.public_key_bytes(key))
    return agent_config(broker.port, broker.tls.ca_cert.read_bytes(), target_id), key


@pytest.mark.asyncio
async def test_agent_goes_online_answers_keepalives_and_says_goodbye(
    broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "mrzap.agent")
    config, key = registered(broker)
    agent = RunningAgent(config, key, Backoff(base_s=0.05, cap_s=0.2))
    target = broker.directory.targets[config.target_id]
    await eventually(lambda: target.state == "ONLINE")
    assert f"mrzap-agent online as {config.target_id} (broker " in caplog.text
    assert agent.loop.online
    # Over several intervals the stream stays up, and the keepalives land in batches.
    await asyncio.sleep(1.5)
    assert len(broker.directory.connections) == 1
    assert broker.directory.seen_batches
    assert target.state == "ONLINE"
    await agent.finish()
    await eventually(lambda: target.state == "OFFLINE")
    (ended,) = broker.directory.disconnections
    assert "SHUTDOWN" in ended[2]


@pytest.mark.asyncio
async def test_agent_reconnects_after_the_broker_restarts(
    broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "mrzap.agent")
    started: list[str] = []

    async def heard_started(target_id: str, admitted_at: float) -> None:
        started.append(target_id)

    broker.role.servicer.on_agent_started = heard_started
    config, key = registered(broker)
    agent = RunningAgent(config, key, Backoff(base_s=0.05, cap_s=0.2))
    target = broker.directory.targets[config.target_id]
    await eventually(lambda: target.state == "ONLINE")
    await eventually(lambda: started == [config.target_id])  # a new process: nothing runs
    await broker.role.shutdown()
    await broker.server.stop(1.0)
    await eventually(lambda: "SHUTDOWN: the broker is shutting down" in caplog.text)
    again = await start_broker(
        broker.tls.directory, broker.directory, port=broker.port, keepalive_interval_s=0.3
    )
    again.role.servicer.on_agent_started = heard_started
    try:
        await eventually(lambda: len(broker.directory.connections) == 2)
        assert target.state == "ONLINE"
        # The same process reconnected: its shells still run, so it says nothing of a start.
        await asyncio.sleep(0.5)
        assert started == [config.target_id]
        await agent.finish()
    finally:
        await again.role.shutdown()
        await again.server.stop(0)


@pytest.mark.asyncio
async def test_deleted_target_stops_the_agent(broker: MemoryBroker) -> None:
    config, key = registered(broker)
    del broker.directory.targets[config.target_id]
    agent = RunningAgent(config, key, Backoff(base_s=0.05, cap_s=0.2))
    with pytest.raises(AgentStopped, match="TARGET_DELETED"):
        await asyncio.wait_for(agent.task, 5.0)


@pytest.mark.asyncio
async def test_refused_key_backs_off_long(broker: MemoryBroker) -> None:
    config, _ = registered(broker)
    agent = RunningAgent(config, keys.generate_signing_key(), Backoff(base_s=0.01, cap_s=1.0))
    await eventually(lambda: len(broker.directory.refusals) == 1)
    await asyncio.sleep(0.4)  # a short back-off would have retried many times by now
    assert len(broker.directory.refusals) == 1
    assert "does not verify" in broker.directory.refusals[0][1]
    await agent.finish()


class SilentBroker:
    """A broker that welcomes the agent and then never says anything again."""

    async def Control(
        self,
        requests: AsyncIterator[pb.ControlRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ControlResponse]:
        yield pb.ControlResponse(challenge=pb.Challenge(nonce=b"n" * 32))
        await anext(requests)
        yield pb.ControlResponse(welcome=pb.Welcome(keepalive_interval=Duration(nanos=200_000_000)))
        async for _ in requests:
            pass


@pytest.mark.asyncio
async def test_silent_broker_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The agent presumes a broker gone after three keepalive intervals without a word."""
    caplog.set_level(logging.INFO, "mrzap.agent")
    tls = ensure_server_tls(tmp_path, ["127.0.0.1"])
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bastion.agent.v1.AgentService",
        {
            "Control": grpc.stream_stream_rpc_method_handler(
                SilentBroker().Control,
                request_deserializer=pb.ControlRequest.FromString,
                response_serializer=pb.ControlResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials([(tls.server_key.read_bytes(), tls.server_chain())]),
    )
    await server.start()
    try:
        config = agent_config(port, tls.ca_cert.read_bytes(), "t")
        agent = RunningAgent(config, keys.generate_signing_key(), Backoff(base_s=5.0, cap_s=5.0))
        await eventually(lambda: "no keepalive from the broker for 0.6 s" in caplog.text, 5.0)
        await agent.finish()
    finally:
        await server.stop(0)
