"""A broker on loopback (real gRPC over TLS) and a raw agent that can send anything.

The raw agent speaks the control stream message by message, so tests can send what the real
agent never would (wrong first message, bad signature, stale timestamp, oversized bytes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.agent.v1 import agent_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from broker import SERVER_OPTIONS, BrokerConfig, BrokerRole, TargetDirectory
from broker.testing import MemoryDirectory
from mrzap import keys
from mrzap.envelope import Domain, sign
from mrzap.rpc import GuardInterceptor
from mrzap.tls import TlsFiles, ensure_server_tls

CONTROL = "/bastion.agent.v1.AgentService/Control"
READ_TIMEOUT_S = 5.0


class StatusOnly(GuardInterceptor):
    """Lets every call through and maps the broker's errors to statuses, like mrzapd's guard."""

    async def guard(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Nothing to check: agents authenticate inside the stream."""


Directory = TypeVar("Directory", bound=TargetDirectory)


@dataclasses.dataclass
class Broker(Generic[Directory]):
    """A running broker and how to reach it."""

    role: BrokerRole
    server: grpc.aio.Server
    port: int
    tls: TlsFiles
    directory: Directory


MemoryBroker = Broker[MemoryDirectory]


@dataclasses.dataclass
class Agent:
    """A registered target's id and key."""

    target_id: str
    key: Ed25519PrivateKey


def agent_auth(
    key: Ed25519PrivateKey, target_id: str, nonce: bytes, *, skew_s: float = 0.0
) -> bytes:
    """A signed AgentAuth answering `nonce`."""
    payload = mrzap_pb2.AgentAuth(
        target_id=target_id,
        nonce=nonce,
        timestamp_ms=round((time.time() + skew_s) * 1000),
        version="test",
    ).SerializeToString()
    return sign(key, Domain.AGENT_AUTH, payload).SerializeToString()


class RawStream:
    """One control stream whose requests are raw bytes."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        method = channel.stream_stream(
            CONTROL,
            request_serializer=lambda raw: raw,
            response_deserializer=pb.ControlResponse.FromString,
        )
        self.call: Any = method()

    async def read(self, timeout_s: float = READ_TIMEOUT_S) -> pb.ControlResponse:
        """The next message from the broker."""
        message = await asyncio.wait_for(self.call.read(), timeout_s)
        assert message is not grpc.aio.EOF, "the broker ended the stream"
        return message  # type: ignore[no-any-return]

    async def send(self, request: pb.ControlRequest | bytes) -> None:
        """Send a message (or raw bytes)."""
        raw = request if isinstance(request, bytes) else request.SerializeToString()
        await self.call.write(raw)

    async def challenge(self) -> bytes:
        """Read the challenge; its nonce."""
        first = await self.read()
        assert first.WhichOneof("frame") == "challenge"
        return bytes(first.challenge.nonce)

    async def authenticate(self, agent: Agent) -> pb.Welcome:
        """Answer the challenge as `agent`; the Welcome."""
        nonce = await self.challenge()
        await self.send(pb.ControlRequest(agent_auth=agent_auth(agent.key, agent.target_id, nonce)))
        answer = await self.read()
        assert answer.WhichOneof("frame") == "welcome", answer
        return answer.welcome

    async def refused(self) -> tuple[pb.ControlClose, grpc.StatusCode, str]:
        """The ControlClose the broker ends with, then the call's status and details."""
        close = await self.read()
        assert close.WhichOneof("frame") == "close", close
        code = await asyncio.wait_for(self.call.code(), READ_TIMEOUT_S)
        return close.close, code, await self.call.details()

    async def ends_ok(self) -> pb.ControlClose:
        """The ControlClose the broker sends, then a clean end of the call."""
        close = await self.read()
        assert close.WhichOneof("frame") == "close", close
        assert await asyncio.wait_for(self.call.code(), READ_TIMEOUT_S) is grpc.StatusCode.OK
        return close.close


async def start_broker(
    tls_dir: Path,
    directory: Directory,
    *,
    keepalive_interval_s: float = 20.0,
    seen_flush_interval_s: float = 5.0,
    auth_timeout_s: float = 10.0,
    port: int = 0,
) -> Broker[Directory]:
    """A broker on 127.0.0.1 (`port` 0 picks a free one) with a fresh id."""
    tls = ensure_server_tls(tls_dir, ["127.0.0.1"])
    config = BrokerConfig(
        broker_id=str(uuid.uuid4()),
        keepalive_interval_s=keepalive_interval_s,
        seen_flush_interval_s=seen_flush_interval_s,
        auth_timeout_s=auth_timeout_s,
    )
    role = BrokerRole(config, directory)
    server = grpc.aio.server(interceptors=[StatusOnly()], options=SERVER_OPTIONS)
    role.add_to_server(server)
    credentials = grpc.ssl_server_credentials([(tls.server_key.read_bytes(), tls.server_chain())])
    port = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    role.start()
    return Broker(role, server, port, tls, directory)


@pytest.fixture
def directory() -> MemoryDirectory:
    return MemoryDirectory()


@pytest.fixture
def register(directory: MemoryDirectory) -> Callable[[], Agent]:
    """Registers a new target with a fresh key."""

    def make() -> Agent:
        agent = Agent(str(uuid.uuid4()), keys.generate_signing_key())
        directory.add(agent.target_id, keys.public_key_bytes(agent.key))
        return agent

    return make


@pytest_asyncio.fixture
async def broker(tmp_path: Path, directory: MemoryDirectory) -> AsyncIterator[MemoryBroker]:
    running = await start_broker(
        tmp_path / "tls", directory, keepalive_interval_s=0.4, seen_flush_interval_s=0.3
    )
    yield running
    await running.role.shutdown()
    await running.server.stop(0)


@pytest_asyncio.fixture
async def channel(broker: Broker[Any]) -> AsyncIterator[grpc.aio.Channel]:
    credentials = grpc.ssl_channel_credentials(broker.tls.ca_cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{broker.port}", credentials) as opened:
        yield opened
