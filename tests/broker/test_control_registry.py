"""The control stream against the real registry and audit log, on SQLite and PostgreSQL.

Refusals must leave an audit event (DENIED) and change nothing about the target: its state,
last_seen and state history stay as they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from audit import MIGRATIONS as AUDIT_MIGRATIONS
from audit import AuditLog, AuditStore, EventQuery
from bastion.agent.v1 import agent_service_pb2 as pb
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap import keys
from mrzap.storage import Database
from registry import MIGRATIONS as REGISTRY_MIGRATIONS
from registry import AgentRegistration, Registry, RegistryStore, TargetState

from .conftest import Agent, Broker, RawStream, agent_auth, start_broker

RegistryBroker = Broker[Registry]


@pytest_asyncio.fixture
async def registry(database_url: str) -> AsyncIterator[tuple[Registry, AuditLog]]:
    database = Database(database_url)
    await asyncio.to_thread(database.migrate, [AUDIT_MIGRATIONS, REGISTRY_MIGRATIONS])
    audit = AuditLog(AuditStore(database))
    yield Registry(RegistryStore(database), audit), audit
    await database.close()


@pytest_asyncio.fixture
async def broker(
    tmp_path: Path, registry: tuple[Registry, AuditLog]
) -> AsyncIterator[RegistryBroker]:
    running = await start_broker(
        tmp_path / "tls", registry[0], keepalive_interval_s=0.4, seen_flush_interval_s=0.3
    )
    yield running
    await running.role.shutdown()
    await running.server.stop(0)


@pytest_asyncio.fixture
async def channel(broker: RegistryBroker) -> AsyncIterator[grpc.aio.Channel]:
    credentials = grpc.ssl_channel_credentials(broker.tls.ca_cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{broker.port}", credentials) as opened:
        yield opened


async def register(registry: Registry, name: str = "web-1") -> Agent:
    key = keys.generate_signing_key()
    issued = await registry.create_activation_token(registration_key=None, target_name=name)
    registered = await registry.register_agent(
        issued.token, AgentRegistration(keys.public_key_bytes(key), name, "0.1.0")
    )
    return Agent(registered.target.id, key)


async def target_events(audit: AuditLog) -> list[audit_pb.AuditEvent]:
    kinds = frozenset({audit_pb.EVENT_KIND_TARGET})
    events, _ = await audit.list_events(EventQuery(kinds=kinds), 100)
    return events


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def state(registry: Registry, agent: Agent) -> TargetState:
    return (await registry.get_target(agent.target_id)).state


@pytest.mark.asyncio
async def test_connect_keepalives_and_disconnect_move_the_target(
    broker: RegistryBroker, channel: grpc.aio.Channel, registry: tuple[Registry, AuditLog]
) -> None:
    directory, audit = registry
    agent = await register(directory)
    stream = RawStream(channel)
    await stream.authenticate(agent)
    target = await directory.get_target(agent.target_id)
    assert (target.state, target.broker_id) == (TargetState.ONLINE, broker.role.config.broker_id)
    connected_seen = target.last_seen_at
    assert connected_seen is not None
    # Answer the broker's probes for a while: last_seen moves, in a few batched writes.
    for _ in range(4):
        while (await stream.read(timeout_s=2.0)).WhichOneof("frame") != "keepalive":
            pass
        await stream.send(pb.ControlRequest(keepalive=pb.Keepalive()))

    async def seen_moved() -> bool:
        seen = (await directory.get_target(agent.target_id)).last_seen_at
        return seen is not None and seen > connected_seen

    await eventually(seen_moved)
    await stream.send(pb.ControlRequest(close=pb.ControlClose()))
    await stream.call.done_writing()

    async def offline() -> bool:
        return await state(directory, agent) is TargetState.OFFLINE

    await eventually(offline)
    _, history = await directory.target_history(agent.target_id)
    assert [change.state for change in history][-2:] == [TargetState.ONLINE, TargetState.OFFLINE]
    events = await target_events(audit)
    assert [event.target.state for event in events[:2]] == [
        registry_pb.TARGET_STATE_OFFLINE,
        registry_pb.TARGET_STATE_ONLINE,
    ]


@pytest.mark.asyncio
async def test_superseded_stream_leaves_the_target_online(
    broker: RegistryBroker, channel: grpc.aio.Channel, registry: tuple[Registry, AuditLog]
) -> None:
    directory, _ = registry
    agent = await register(directory)
    older, newer = RawStream(channel), RawStream(channel)
    await older.authenticate(agent)
    await newer.authenticate(agent)
    assert (await older.ends_ok()).reason == pb.CONTROL_CLOSE_REASON_SUPERSEDED
    await asyncio.sleep(0.2)
    assert await state(directory, agent) is TargetState.ONLINE


Attack = Callable[[RawStream, Agent, Agent], Awaitable[None]]


async def unknown_target(stream: RawStream, victim: Agent, other: Agent) -> None:
    nonce = await stream.challenge()
    await stream.send(
        pb.ControlRequest(
            agent_auth=agent_auth(
                keys.generate_signing_key(), "7d5c2a9e-0000-4000-8000-000000000000", nonce
            )
        )
    )


async def forged_signature(stream: RawStream, victim: Agent, other: Agent) -> None:
    nonce = await stream.challenge()
    forger = keys.generate_signing_key()
    await stream.send(pb.ControlRequest(agent_auth=agent_auth(forger, victim.target_id, nonce)))


async def another_targets_key(stream: RawStream, victim: Agent, other: Agent) -> None:
    nonce = await stream.challenge()
    await stream.send(pb.ControlRequest(agent_auth=agent_auth(other.key, victim.target_id, nonce)))


async def wrong_nonce(stream: RawStream, victim: Agent, other: Agent) -> None:
    await stream.challenge()
    await stream.send(
        pb.ControlRequest(agent_auth=agent_auth(victim.key, victim.target_id, b"\x00" * 32))
    )


async def stale_timestamp(stream: RawStream, victim: Agent, other: Agent) -> None:
    nonce = await stream.challenge()
    signed = agent_auth(victim.key, victim.target_id, nonce, skew_s=-600)
    await stream.send(pb.ControlRequest(agent_auth=signed))


async def keepalive_first(stream: RawStream, victim: Agent, other: Agent) -> None:
    await stream.challenge()
    await stream.send(pb.ControlRequest(keepalive=pb.Keepalive()))


async def malformed(stream: RawStream, victim: Agent, other: Agent) -> None:
    await stream.challenge()
    await stream.send(b"\xff\xff\xff")


async def oversized(stream: RawStream, victim: Agent, other: Agent) -> None:
    nonce = await stream.challenge()
    signed = agent_auth(victim.key, victim.target_id, nonce)
    await stream.send(pb.ControlRequest(agent_auth=signed + b"\x00" * (512 * 1024)))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("attack", "close_reason", "audited_target"),
    [
        (unknown_target, pb.CONTROL_CLOSE_REASON_TARGET_DELETED, False),
        (forged_signature, pb.CONTROL_CLOSE_REASON_AUTH_FAILED, True),
        (another_targets_key, pb.CONTROL_CLOSE_REASON_AUTH_FAILED, True),
        (wrong_nonce, pb.CONTROL_CLOSE_REASON_AUTH_FAILED, True),
        (stale_timestamp, pb.CONTROL_CLOSE_REASON_AUTH_FAILED, True),
        (keepalive_first, pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR, False),
        (malformed, pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR, False),
        (oversized, pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR, False),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
async def test_refusal_is_audited_and_changes_nothing(
    broker: RegistryBroker,
    channel: grpc.aio.Channel,
    registry: tuple[Registry, AuditLog],
    attack: Attack,
    close_reason: int,
    audited_target: bool,
) -> None:
    directory, audit = registry
    victim, other = await register(directory, "victim"), await register(directory, "other")
    before = [await directory.target_history(a.target_id) for a in (victim, other)]
    events_before = len(await target_events(audit))
    stream = RawStream(channel)
    await attack(stream, victim, other)
    close, code, details = await stream.refused()
    assert close.reason == close_reason
    assert code is not grpc.StatusCode.OK

    async def audited() -> bool:
        return len(await target_events(audit)) > events_before

    await eventually(audited)
    refusal = (await target_events(audit))[0]
    assert refusal.outcome == audit_pb.EVENT_OUTCOME_DENIED
    assert refusal.target.message.startswith(details)
    assert refusal.target.target_id == (victim.target_id if audited_target else "")
    assert refusal.actor.address.startswith("ipv4:127.0.0.1:")
    await asyncio.sleep(0.4)  # past a last_seen flush
    after = [await directory.target_history(a.target_id) for a in (victim, other)]
    assert after == before
    assert len(await target_events(audit)) == events_before + 1
