"""ListConnections, CloseConnection and revocation push over real gRPC/TLS on loopback.

Like tests/broker/test_relay.py, the policy and auth roles are replaced by `StaticGrantIssuer`
and a chosen caller, and the agent is a raw control stream (so the test sees exactly what the
broker sends it); the connection records live in a real SQLite database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import MIGRATIONS as AUDIT_MIGRATIONS
from audit import AuditLog, AuditStore
from auth import Caller
from bastion.agent.v1 import agent_service_pb2 as agent_pb
from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from broker import (
    MIGRATIONS,
    BrokerConfig,
    BrokerRole,
    ConnectedAgents,
    Connections,
    ConnectionStore,
    Revocations,
)
from broker.testing import MemoryDirectory, StaticGrantIssuer, user_caller
from mrzap import keys
from mrzap.envelope import Domain, verify_signature
from mrzap.storage import Database, sqlite_url

from .conftest import READ_TIMEOUT_S, Agent, RawStream
from .harness import Harness, running_harness


@dataclasses.dataclass
class Cluster:
    """A broker keeping connection records, and callers to switch between."""

    harness: Harness
    connections: Connections
    revocations: Revocations
    alice: Caller
    bob: Caller
    admin: Caller

    def be(self, caller: Caller) -> None:
        self.harness.callers.append(caller)

    async def list(self, **fields: Any) -> list[pb.Connection]:  # noqa: ANN401 - request fields
        response: pb.ListConnectionsResponse = await self.harness.stub.ListConnections(  # type: ignore[misc]
            pb.ListConnectionsRequest(**fields), timeout=READ_TIMEOUT_S
        )
        return list(response.connections)

    async def close(self, connection_id: str, reason: str = "") -> pb.Connection:
        response: pb.CloseConnectionResponse = await self.harness.stub.CloseConnection(  # type: ignore[misc]
            pb.CloseConnectionRequest(connection_id=connection_id, reason=reason),
            timeout=READ_TIMEOUT_S,
        )
        return response.connection


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    db = Database(sqlite_url(tmp_path / "mrzap.db"))
    await asyncio.to_thread(db.migrate, [AUDIT_MIGRATIONS, MIGRATIONS])
    store = ConnectionStore(db)
    wired: list[tuple[Connections, Revocations]] = []

    def wiring(
        config: BrokerConfig, directory: MemoryDirectory, issuer: StaticGrantIssuer
    ) -> tuple[BrokerRole, dict[str, Any]]:
        agents = ConnectedAgents()
        revocations = Revocations(issuer, agents, store)
        role = BrokerRole(config, directory, agents=agents, on_welcome=revocations.welcome)
        connections = Connections(store, AuditLog(AuditStore(db)), config.broker_id, role.relay)
        revocations.listen(connections.abort_revoked)
        revocations.after_revoke(connections.close_revoked_users)
        wired.append((connections, revocations))
        return role, {"connections": connections, "revocations": revocations}

    session_key = keys.generate_signing_key()
    upk = keys.public_key_bytes(session_key)
    alice = user_caller(upk, subject="alice-sub")
    bob = user_caller(upk, subject="bob-sub")
    admin = dataclasses.replace(user_caller(upk, subject="admin-sub"), is_admin=True)
    try:
        async with running_harness(
            tmp_path, caller=alice, session_key=session_key, wiring=wiring
        ) as harness:
            [(connections, revocations)] = wired
            try:
                yield Cluster(harness, connections, revocations, alice, bob, admin)
            finally:
                await connections.stop()
    finally:
        await db.close()


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as running:
        yield running


async def read_until(stream: RawStream, kind: str) -> agent_pb.ControlResponse:
    """The next message of `kind` from the broker, skipping keepalives."""
    while True:
        message = await stream.read()
        if message.WhichOneof("frame") == kind:
            return message
        assert message.WhichOneof("frame") == "keepalive", message


async def open_shell(cluster: Cluster, stream: RawStream, agent: Agent) -> tuple[Any, str]:
    """A Channel call the agent accepted; (call, connection id)."""
    harness = cluster.harness
    opened = await harness.open_connection(agent.target_id)
    assert opened.connection_id == opened.channel_id  # a new connection is named by its channel
    call: Any = harness.stub.Channel()  # type: ignore[call-arg]
    await call.write(harness.open_request(opened))
    await read_until(stream, "channel_open")
    await stream.send(
        agent_pb.ControlRequest(
            channel_answer=agent_pb.ChannelAnswer(
                channel_id=opened.channel_id, syn_ack=b"signed-synack"
            )
        )
    )
    first = await asyncio.wait_for(call.read(), READ_TIMEOUT_S)
    assert first.syn_ack == b"signed-synack"
    await cluster.connections.flush()
    return call, opened.connection_id


def revocation_in(message: agent_pb.ControlResponse, service_key: Ed25519PrivateKey) -> Any:  # noqa: ANN401
    """The Revocation the message carries, after checking the service key signed it."""
    signed = mrzap_pb2.Signed.FromString(message.revocation)
    payload = verify_signature(signed, service_key.public_key(), Domain.REVOCATION)
    return mrzap_pb2.Revocation.FromString(payload)


async def drain(call: Any) -> None:  # noqa: ANN401 - grpc's call
    """Read the channel call to its end."""
    while await asyncio.wait_for(call.read(), READ_TIMEOUT_S) is not grpc.aio.EOF:
        pass


async def failure(call: Any) -> grpc.aio.AioRpcError:  # noqa: ANN401 - grpc's call
    """How the channel call failed."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await drain(call)
    return raised.value


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:  # noqa: ANN401 - an awaitable call
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


@pytest.mark.asyncio
async def test_closing_a_connection_revokes_its_grant_and_aborts_the_channel(
    cluster: Cluster,
) -> None:
    agent, stream = await cluster.harness.online()
    call, connection_id = await open_shell(cluster, stream, agent)
    [listed] = await cluster.list()
    assert listed.id == connection_id
    assert listed.state == pb.CONNECTION_STATE_OPEN
    assert listed.target_user == "alice"
    grant_ids = list(listed.grant_ids)

    closed = await cluster.close(connection_id, "done for today")
    assert closed.state == pb.CONNECTION_STATE_CLOSED
    assert closed.HasField("close_time")
    # The agent hears the signed revocation of the connection's grants, then the channel's end.
    revocation = revocation_in(await read_until(stream, "revocation"), cluster.harness.service_key)
    assert list(revocation.grant_ids) == grant_ids
    await read_until(stream, "channel_close")
    # The client's call ends with ABORTED.
    ended = await failure(call)
    assert ended.code() is grpc.StatusCode.ABORTED
    assert "done for today" in (ended.details() or "")
    await cluster.connections.flush()
    assert await cluster.list() == []
    [record] = await cluster.list(states=[pb.CONNECTION_STATE_CLOSED])
    assert "done for today" in (await cluster.connections.get(connection_id)).close_reason  # type: ignore[union-attr]
    assert record.state == pb.CONNECTION_STATE_CLOSED


@pytest.mark.asyncio
async def test_a_user_cannot_list_close_or_reattach_to_anothers_connection(
    cluster: Cluster,
) -> None:
    agent, stream = await cluster.harness.online()
    call, connection_id = await open_shell(cluster, stream, agent)
    cluster.be(cluster.bob)
    assert await cluster.list() == []
    denied = await rpc_error(cluster.list(user_id=cluster.alice.user_id))
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    denied = await rpc_error(cluster.list(all_users=True))
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    refused = await rpc_error(cluster.close(connection_id))
    assert refused.code() is grpc.StatusCode.NOT_FOUND

    # Re-attaching to alice's shell is refused before any grant is signed for bob.
    issued = len(cluster.harness.issuer.issued)
    refused = await rpc_error(
        cluster.harness.open_connection(agent.target_id, connection_id=connection_id)
    )
    assert refused.code() is grpc.StatusCode.NOT_FOUND
    assert len(cluster.harness.issuer.issued) == issued

    # Nothing reached the agent, and alice's connection is untouched.
    cluster.be(cluster.alice)
    [listed] = await cluster.list()
    assert listed.state == pb.CONNECTION_STATE_OPEN
    await call.done_writing()
    call.cancel()


@pytest.mark.asyncio
async def test_administrators_list_everyones_and_close_any(cluster: Cluster) -> None:
    agent, stream = await cluster.harness.online()
    _, alices = await open_shell(cluster, stream, agent)
    cluster.be(cluster.bob)
    _, bobs = await open_shell(cluster, stream, agent)
    cluster.be(cluster.admin)
    assert {c.id for c in await cluster.list(all_users=True)} == {alices, bobs}
    assert [c.id for c in await cluster.list(user_id=cluster.bob.user_id)] == [bobs]
    assert [c.id for c in await cluster.list(all_users=True, target_id="elsewhere")] == []
    closed = await cluster.close(alices, "incident 42")
    assert closed.state == pb.CONNECTION_STATE_CLOSED
    await read_until(stream, "revocation")
    assert [c.id for c in await cluster.list(all_users=True)] == [bobs]


@pytest.mark.asyncio
async def test_a_shell_whose_client_leaves_is_detached_and_can_be_reattached(
    cluster: Cluster,
) -> None:
    agent, stream = await cluster.harness.online()
    call, connection_id = await open_shell(cluster, stream, agent)
    call.cancel()
    await read_until(stream, "channel_close")
    await cluster.connections.flush()
    [listed] = await cluster.list()
    assert listed.state == pb.CONNECTION_STATE_DETACHED
    opened = await cluster.harness.open_connection(agent.target_id, connection_id=connection_id)
    assert opened.connection_id == connection_id
    assert opened.channel_id != connection_id
    [listed] = await cluster.list()
    assert len(listed.grant_ids) == 2


@pytest.mark.parametrize(
    ("detached", "state"),
    [(True, pb.CONNECTION_STATE_DETACHED), (False, pb.CONNECTION_STATE_CLOSED)],
)
@pytest.mark.asyncio
async def test_a_shell_whose_channel_the_agent_ends_is_detached_only_if_it_runs_on(
    cluster: Cluster, detached: bool, state: pb.ConnectionState.ValueType
) -> None:
    """The agent ends a channel for a broken frame but keeps the shell (detached), or ends it
    because the shell exited; the record follows what the agent says."""
    agent, stream = await cluster.harness.online()
    call, connection_id = await open_shell(cluster, stream, agent)
    await stream.send(
        agent_pb.ControlRequest(
            channel_close=agent_pb.ChannelClose(
                channel_id=connection_id, reason="frame 3 failed", detached=detached
            )
        )
    )
    await call.done_writing()
    await drain(call)
    await cluster.connections.flush()
    [listed] = await cluster.list(states=[state])
    assert listed.id == connection_id


@pytest.mark.asyncio
async def test_revocations_in_force_are_sent_again_after_welcome(cluster: Cluster) -> None:
    agent, stream = await cluster.harness.online()
    _, connection_id = await open_shell(cluster, stream, agent)
    await cluster.close(connection_id)
    sent = await read_until(stream, "revocation")
    # The agent restarts: its new stream hears the revocation right after Welcome.
    again = RawStream(cluster.harness.channel)
    await again.authenticate(agent)
    resent = await again.read()
    assert resent.WhichOneof("frame") == "revocation"
    assert resent.revocation == sent.revocation


@pytest.mark.asyncio
async def test_revoking_a_user_ends_only_their_channels_and_closes_their_records(
    cluster: Cluster,
) -> None:
    agent, stream = await cluster.harness.online()
    alices_call, alices = await open_shell(cluster, stream, agent)
    cluster.be(cluster.bob)
    bobs_call, bobs = await open_shell(cluster, stream, agent)
    alice = cluster.alice.user
    assert alice is not None
    subject = mrzap_pb2.Subject(iss=alice.issuer, sub=alice.subject)
    await cluster.revocations.revoke(subjects=[subject], reason="alice is locked")
    revocation = revocation_in(await read_until(stream, "revocation"), cluster.harness.service_key)
    assert [(s.iss, s.sub) for s in revocation.subjects] == [(alice.issuer, alice.subject)]
    assert (await failure(alices_call)).code() is grpc.StatusCode.ABORTED
    await cluster.connections.flush()
    cluster.be(cluster.admin)
    assert [c.id for c in await cluster.list(all_users=True)] == [bobs]
    assert await cluster.connections.live_ids_of(cluster.alice.user_id) == []
    assert alices not in await cluster.connections.live_ids_of(cluster.bob.user_id)
    bobs_call.cancel()
