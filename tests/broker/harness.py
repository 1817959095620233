"""A broker serving both AgentService and BrokerService on loopback over TLS, for relay tests.

The policy and auth roles are replaced by `StaticGrantIssuer` and a fixed caller (see
broker/testing.py); agents are raw control streams or real agents pointed at `address`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth import Caller
from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from broker import SERVER_OPTIONS, BrokerConfig, BrokerRole, BrokerServicer
from broker.testing import MemoryDirectory, StaticGrantIssuer, user_caller
from mrzap import keys
from mrzap.grant import GrantSigner
from mrzap.handshake import build_syn
from mrzap.tls import TlsFiles, ensure_server_tls

from .conftest import READ_TIMEOUT_S, Agent, RawStream, StatusOnly

SHELL = mrzap_pb2.ShellOpen(target_user="alice", term="xterm", cols=80, rows=24)
#: The relay's default queue bound in these tests: small, so tests can exceed it cheaply.
MAX_QUEUED = 64 * 1024


@dataclasses.dataclass
class Harness:
    """A broker serving AgentService and BrokerService, and a client of both."""

    directory: MemoryDirectory
    issuer: StaticGrantIssuer
    role: BrokerRole
    channel: grpc.aio.Channel
    stub: pb_grpc.BrokerServiceStub
    session_key: Ed25519PrivateKey
    callers: list[Caller]
    """The caller the broker sees is the last of these."""
    agent_keys: dict[str, bytes]
    """The issuer's view of the registered agents' keys."""
    service_key: Ed25519PrivateKey
    """The grant key the issuer signs with (key id "svc-1")."""
    tls: TlsFiles
    port: int

    def connection(self, port: int = 0) -> grpc.aio.Channel:
        """Another client connection to the broker, or to `port` (a proxy in front of it)."""
        credentials = grpc.ssl_channel_credentials(self.tls.ca_cert.read_bytes())
        return grpc.aio.secure_channel(f"127.0.0.1:{port or self.port}", credentials)

    def register(self) -> Agent:
        agent = Agent(str(uuid.uuid4()), keys.generate_signing_key())
        self.directory.add(agent.target_id, keys.public_key_bytes(agent.key))
        self.agent_keys[agent.target_id] = keys.public_key_bytes(agent.key)
        return agent

    async def online(self) -> tuple[Agent, RawStream]:
        """A registered agent with an authenticated control stream."""
        agent = self.register()
        stream = RawStream(self.channel)
        await stream.authenticate(agent)
        return agent, stream

    async def open_connection(
        self,
        target_id: str,
        verb: mrzap_pb2.Verb.ValueType = mrzap_pb2.VERB_SHELL,
        target_user: str = "alice",
        connection_id: str = "",
    ) -> pb.OpenConnectionResponse:
        """OpenConnection for a new connection, or to re-attach to `connection_id`."""
        response: pb.OpenConnectionResponse = await self.stub.OpenConnection(  # type: ignore[misc]
            pb.OpenConnectionRequest(
                target_id=target_id,
                verb=verb,
                target_user=target_user,
                connection_id=connection_id,
            ),
            timeout=READ_TIMEOUT_S,
        )
        return response

    def open_request(self, opened: pb.OpenConnectionResponse) -> pb.ChannelRequest:
        """The open message of a Channel call for the connection."""
        return pb.ChannelRequest(
            open=pb.ChannelOpen(channel_id=opened.channel_id, syn=self.syn(opened))
        )

    def syn(self, opened: pb.OpenConnectionResponse, channel_id: str = "") -> bytes:
        """A client SYN for the connection (the broker does not verify its PK token)."""
        return build_syn(
            session_key=self.session_key,
            pk_token=mrzap_pb2.PkToken(id_token="not.checked.here"),
            signed_grant=opened.grant,
            channel_id=channel_id or opened.channel_id,
            action=SHELL,
        ).signed_syn


#: Builds the broker's role and the extra keyword arguments of its BrokerServicer (connection
#: records, revocations, ...) from the harness's configuration, directory and grant issuer.
Wiring = Callable[
    [BrokerConfig, MemoryDirectory, StaticGrantIssuer], tuple[BrokerRole, dict[str, Any]]
]


def _bare(
    config: BrokerConfig, directory: MemoryDirectory, _issuer: StaticGrantIssuer
) -> tuple[BrokerRole, dict[str, Any]]:
    return BrokerRole(config, directory), {}


@contextlib.asynccontextmanager
async def running_harness(
    tmp_path: Path,
    *,
    caller: Caller | None = None,
    session_key: Ed25519PrivateKey | None = None,
    max_queued: int = MAX_QUEUED,
    wiring: Wiring = _bare,
    options: tuple[tuple[str, int], ...] = SERVER_OPTIONS,
) -> AsyncIterator[Harness]:
    """A broker with a relay bounded by `max_queued` bytes, and a client channel to it.

    The broker's caller is `caller` (by default a user whose session key is `session_key`); it
    serves with the gRPC server `options`.
    """
    tls: TlsFiles = ensure_server_tls(tmp_path / "tls", ["127.0.0.1"])
    directory = MemoryDirectory()
    service_key = keys.generate_signing_key()
    agent_keys: dict[str, bytes] = {}
    issuer = StaticGrantIssuer(GrantSigner(service_key, "svc-1"), agent_keys)
    config = BrokerConfig(broker_id=str(uuid.uuid4()), max_channel_queue_bytes=max_queued)
    role, servicer_options = wiring(config, directory, issuer)
    session_key = session_key or keys.generate_signing_key()
    callers = [caller or user_caller(keys.public_key_bytes(session_key))]
    server = grpc.aio.server(interceptors=[StatusOnly()], options=options)
    role.add_to_server(server)
    pb_grpc.add_BrokerServiceServicer_to_server(
        BrokerServicer(issuer, role.relay, caller=lambda: callers[-1], **servicer_options), server
    )
    credentials = grpc.ssl_server_credentials([(tls.server_key.read_bytes(), tls.server_chain())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    role.start()
    client_credentials = grpc.ssl_channel_credentials(tls.ca_cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client_credentials) as channel:
        harness = Harness(
            directory,
            issuer,
            role,
            channel,
            pb_grpc.BrokerServiceStub(channel),
            session_key,
            callers,
            agent_keys,
            service_key,
            tls,
            port,
        )
        try:
            yield harness
        finally:
            await role.shutdown()
            await server.stop(0)
            await role.servicer.streams_ended()
