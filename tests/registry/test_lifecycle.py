"""The target lifecycle on SQLite and PostgreSQL: what the broker reports, what `sweep` does with
time, and what administrators do to targets (list, get, rename, delete)."""

from __future__ import annotations

import uuid

import pytest

from audit import Actor
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from mrzap.errors import InvalidArgument, NotFound
from registry import Sweeper, SweepResult, TargetFilter, TargetState

from .conftest import START, Org


async def online(org: Org, name: str = "web-1", broker: str = "b-1", env: str = "") -> str:
    registered = await org.register(name, env)
    await org.registry.agent_connected(registered.target.id, broker, "ipv4:10.0.0.1:7000")
    return registered.target.id


async def state_of(org: Org, target_id: str) -> TargetState:
    return (await org.registry.get_target(target_id)).state


@pytest.mark.asyncio
async def test_the_broker_s_key_lookup_knows_only_registered_targets(org: Org) -> None:
    registered = await org.register()
    assert len(await org.registry.agent_public_key(registered.target.id)) == 32
    pending = await org.registry.create_activation_token(registration_key=None)
    for unknown in (pending.target.id, str(uuid.uuid4()), "not-a-uuid", "", "x" * 5000):
        with pytest.raises(NotFound):
            await org.registry.agent_public_key(unknown)
    await org.registry.delete_target(registered.target.id)
    with pytest.raises(NotFound):
        await org.registry.agent_public_key(registered.target.id)


@pytest.mark.asyncio
async def test_a_connected_agent_is_online_on_its_broker(org: Org) -> None:
    registered = await org.register()
    org.clock.advance(5)
    await org.registry.agent_connected(registered.target.id, "b-1", "ipv4:10.0.0.1:7000")
    target, history = await org.registry.target_history(registered.target.id)
    assert (target.state, target.broker_id, target.last_seen_at) == (
        TargetState.ONLINE,
        "b-1",
        START + 5,
    )
    assert history[-1].state is TargetState.ONLINE
    assert "broker b-1" in history[-1].reason
    event = (await org.events(target.id))[0]
    assert (event.target.state, event.actor.address) == (
        TargetState.ONLINE.value,
        "ipv4:10.0.0.1:7000",
    )
    with pytest.raises(NotFound):
        await org.registry.agent_connected(str(uuid.uuid4()), "b-1", "ipv4:10.0.0.1:7000")
    pending = await org.registry.create_activation_token(registration_key=None)
    with pytest.raises(NotFound):
        await org.registry.agent_connected(pending.target.id, "b-1", "ipv4:10.0.0.1:7000")
    assert await state_of(org, pending.target.id) is TargetState.ACTIVATION


@pytest.mark.asyncio
async def test_keepalives_update_last_seen_in_one_call(org: Org) -> None:
    first = await online(org, "a")
    second = await online(org, "b")
    unknown = str(uuid.uuid4())
    gone = await org.registry.agents_seen({first, second, "not-a-uuid", unknown}, START + 42)
    assert gone == {"not-a-uuid", unknown}  # the broker ends the streams of these
    for target_id in (first, second):
        assert (await org.registry.get_target(target_id)).last_seen_at == START + 42
    assert await org.registry.agents_seen([], START + 50) == set()
    await org.registry.delete_target(second)
    assert await org.registry.agents_seen([first, second], START + 60) == {second}


@pytest.mark.asyncio
async def test_a_stream_end_makes_the_target_offline_unless_it_moved_broker(org: Org) -> None:
    target_id = await online(org, broker="b-1")
    await org.registry.agent_connected(target_id, "b-2", "ipv4:10.0.0.1:7001")
    # b-1 notices its old stream ended after the agent reconnected to b-2: nothing changes.
    await org.registry.agent_disconnected(target_id, "b-1", "stream reset")
    target = await org.registry.get_target(target_id)
    assert (target.state, target.broker_id) == (TargetState.ONLINE, "b-2")
    org.clock.advance(3)
    await org.registry.agent_disconnected(target_id, "b-2", "agent closed\x1b[2J the stream")
    target, history = await org.registry.target_history(target_id)
    assert target.state is TargetState.OFFLINE
    assert target.state_changed_at == START + 3
    assert history[-1].reason == "control stream to broker b-2 ended: agent closed?[2J the stream"
    await org.registry.agent_disconnected(target_id, "b-2", "again")  # already offline
    await org.registry.agent_disconnected("not-a-uuid", "b-2", "garbage")
    states = [c.state for c in history]
    assert states == [
        TargetState.ACTIVATION,
        TargetState.REGISTERED,
        TargetState.ONLINE,
        TargetState.ONLINE,
        TargetState.OFFLINE,
    ]
    assert len(await org.events(target_id)) == len(states)


@pytest.mark.asyncio
async def test_sweep_marks_silent_targets_offline(org: Org) -> None:
    quiet = await online(org, "quiet")
    chatty = await online(org, "chatty")
    org.clock.advance(59)
    await org.registry.agents_seen([chatty], org.clock.now())
    assert await org.registry.sweep() == SweepResult()
    org.clock.advance(1)
    result = await org.registry.sweep()
    assert result.offline == (quiet,)
    assert await state_of(org, quiet) is TargetState.OFFLINE
    assert await state_of(org, chatty) is TargetState.ONLINE
    _, history = await org.registry.target_history(quiet)
    assert history[-1].reason == "no keepalive for 1 min"
    event = (await org.events(quiet))[0]
    assert (event.target.state, event.target.message) == (
        TargetState.OFFLINE.value,
        "no keepalive for 1 min",
    )
    assert (await org.registry.sweep()).offline == ()  # each transition happens once


@pytest.mark.asyncio
async def test_sweep_terminates_long_offline_targets_per_environment(org: Org) -> None:
    quick = await org.registry.create_environment("quick", offline_cleanup_timeout_s=3600)
    fast = await online(org, "fast", env=quick.id)
    slow = await online(org, "slow")
    for target_id in (fast, slow):
        await org.registry.agent_disconnected(target_id, "b-1", "gone")
    org.clock.advance(3599)
    assert (await org.registry.sweep()).terminated == ()
    org.clock.advance(1)
    assert (await org.registry.sweep()).terminated == (fast,)
    assert await state_of(org, fast) is TargetState.TERMINATED
    org.clock.advance(86400 - 3600)
    assert (await org.registry.sweep()).terminated == (slow,)
    _, history = await org.registry.target_history(slow)
    assert history[-1].reason == "offline for longer than 1 d"


@pytest.mark.asyncio
async def test_the_sweeper_reports_each_terminated_target_even_when_one_report_fails(
    org: Org,
) -> None:
    first, second = await online(org, "a"), await online(org, "b")
    reported: list[str] = []

    async def on_terminated(target_id: str) -> None:
        reported.append(target_id)
        if len(reported) == 1:
            raise RuntimeError("the database went away")

    sweeper = Sweeper(org.registry, on_terminated=on_terminated)
    org.clock.advance(61)
    await sweeper.sweep_once()
    assert reported == []  # only OFFLINE yet
    org.clock.advance(86400)
    await sweeper.sweep_once()
    assert sorted(reported) == sorted([first, second])
    await sweeper.sweep_once()
    assert len(reported) == 2  # each target is terminated, and reported, once


@pytest.mark.asyncio
async def test_a_terminated_target_comes_back_online_with_its_key(org: Org) -> None:
    target_id = await online(org)
    org.clock.advance(61)
    await org.registry.sweep()
    org.clock.advance(86400)
    assert (await org.registry.sweep()).terminated == (target_id,)
    key = await org.registry.agent_public_key(target_id)
    assert len(key) == 32
    await org.registry.agent_connected(target_id, "b-9", "ipv4:10.0.0.1:7002")
    assert await state_of(org, target_id) is TargetState.ONLINE
    _, history = await org.registry.target_history(target_id)
    assert [c.state for c in history][-3:] == [
        TargetState.OFFLINE,
        TargetState.TERMINATED,
        TargetState.ONLINE,
    ]


@pytest.mark.asyncio
async def test_a_reconnect_during_the_cleanup_timeout_restarts_it(org: Org) -> None:
    target_id = await online(org)
    await org.registry.agent_disconnected(target_id, "b-1", "gone")
    org.clock.advance(86000)
    await org.registry.agent_connected(target_id, "b-1", "ipv4:10.0.0.1:7003")
    await org.registry.agent_disconnected(target_id, "b-1", "gone again")
    org.clock.advance(1000)
    assert (await org.registry.sweep()).terminated == ()
    assert await state_of(org, target_id) is TargetState.OFFLINE


@pytest.mark.asyncio
async def test_sweep_removes_targets_whose_activation_expired_unused(org: Org) -> None:
    stale = await org.registry.create_activation_token(registration_key=None, target_name="s")
    org.clock.advance(300)
    fresh = await org.registry.create_activation_token(registration_key=None, target_name="f")
    org.clock.advance(300)
    result = await org.registry.sweep()
    assert result.abandoned == (stale.target.id,)
    with pytest.raises(NotFound):
        await org.registry.get_target(stale.target.id)
    assert await state_of(org, fresh.target.id) is TargetState.ACTIVATION
    event = (await org.events(stale.target.id))[0]
    assert event.target.message == "the activation token expired unused: target removed"


@pytest.mark.asyncio
async def test_refused_agents_are_audited(org: Org) -> None:
    target_id = await online(org)
    await org.registry.agent_refused(target_id, "bad signature", "ipv4:10.0.0.66:1")
    org.clock.advance(1)
    await org.registry.agent_refused(str(uuid.uuid4()), "unknown target", "ipv4:10.0.0.66:2")
    org.clock.advance(1)
    await org.registry.agent_refused("\x1b[31mred" * 20, "malformed id", "ipv4:10.0.0.66:3")
    org.clock.advance(1)
    await org.registry.agent_refused("", "oversized first message", "ipv4:10.0.0.66:4")
    denied = [e for e in await org.events() if e.outcome == audit_pb.EVENT_OUTCOME_DENIED]
    assert [(e.target.target_id, e.actor.address) for e in denied] == [
        ("", "ipv4:10.0.0.66:4"),
        ("", "ipv4:10.0.0.66:3"),
        ("", "ipv4:10.0.0.66:2"),
        (target_id, "ipv4:10.0.0.66:1"),
    ]
    assert denied[0].target.message == "oversized first message"
    assert denied[1].target.message.startswith("malformed id (it named target '?[31mred")
    assert "\x1b" not in denied[1].target.message
    assert "which does not exist" in denied[2].target.message
    assert await state_of(org, target_id) is TargetState.ONLINE


@pytest.mark.asyncio
async def test_a_deleted_target_is_forgotten_and_the_deletion_audited(org: Org) -> None:
    target_id = await online(org)
    await org.registry.delete_target(target_id, Actor("admin-1", address="ipv4:10.0.0.2:1"))
    for lookup in (org.registry.get_target, org.registry.agent_public_key):
        with pytest.raises(NotFound):
            await lookup(target_id)
    event = (await org.events(target_id))[0]
    assert (event.actor.user_id, event.target.message) == (
        "admin-1",
        "target 'web-1' deleted in state ONLINE",
    )
    with pytest.raises(NotFound):
        await org.registry.delete_target(target_id)
    # A broker that still holds the deleted target's stream reports its end: nothing breaks.
    await org.registry.agent_disconnected(target_id, "b-1", "deleted")
    await org.registry.agents_seen([target_id], org.clock.now())


@pytest.mark.asyncio
async def test_renaming_checks_the_name_and_is_audited(org: Org) -> None:
    target_id = await online(org)
    renamed = await org.registry.rename_target(target_id, " web-2 ", Actor("admin-1"))
    assert renamed.name == "web-2"
    assert (await org.registry.get_target(target_id)).name == "web-2"
    assert (await org.events(target_id))[0].target.message == "renamed from 'web-1' to 'web-2'"
    for bad in ("", "x" * 254, "null\x00byte"):
        with pytest.raises(InvalidArgument, match="target name"):
            await org.registry.rename_target(target_id, bad)
    with pytest.raises(NotFound):
        await org.registry.rename_target(str(uuid.uuid4()), "web-3")


@pytest.mark.asyncio
async def test_targets_filter_and_page_in_name_order(org: Org) -> None:
    lab = await org.registry.create_environment("lab")
    ids = {
        "a": await online(org, "a"),
        "b": (await org.register("b")).target.id,
        "c": await online(org, "c", env=lab.id),
        "d": (await org.register("d", lab.id)).target.id,
        "e": await online(org, "e"),
    }
    # Names need not be unique.
    duplicate = (await org.register("a")).target.id
    names: list[str] = []
    token = ""
    while True:
        page, token = await org.registry.list_targets(TargetFilter(), 2, token)
        names += [t.name for t in page]
        if not token:
            break
    assert names == ["a", "a", "b", "c", "d", "e"]

    async def matching(search: TargetFilter) -> set[str]:
        targets, _ = await org.registry.list_targets(search, 100)
        return {t.id for t in targets}

    assert await matching(TargetFilter(environment_ids=frozenset({lab.id}))) == {
        ids["c"],
        ids["d"],
    }
    assert await matching(TargetFilter(states=frozenset({TargetState.REGISTERED}))) == {
        ids["b"],
        ids["d"],
        duplicate,
    }
    assert await matching(
        TargetFilter(environment_ids=frozenset({lab.id}), states=frozenset({TargetState.ONLINE}))
    ) == {ids["c"]}
    assert await matching(TargetFilter(name="a")) == {ids["a"], duplicate}
    assert await matching(TargetFilter(name="zzz")) == set()
    with pytest.raises(InvalidArgument, match="page token"):
        await org.registry.list_targets(TargetFilter(), 2, "!!")
