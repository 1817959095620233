"""Activation tokens and agent registration on SQLite and PostgreSQL: the happy path and every
refusal, each audited, with nothing half-registered left behind."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from audit import Actor, EventQuery
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from mrzap import keys
from mrzap.errors import InvalidArgument, MrzapError, NotFound, Unauthenticated
from registry import AgentRegistration, IssuedToken, TargetFilter, TargetState

from .conftest import START, Org


def agent_key() -> bytes:
    return keys.public_key_bytes(keys.generate_signing_key())


async def issue(org: Org, name: str = "web-1") -> IssuedToken:
    return await org.registry.create_activation_token(
        registration_key=await org.registration_key(), target_name=name
    )


async def all_targets(org: Org) -> list[str]:
    targets, _ = await org.registry.list_targets(TargetFilter())
    return [target.id for target in targets]


@pytest.mark.asyncio
async def test_a_target_registers_with_a_key_then_a_token(org: Org) -> None:
    issued = await issue(org, "web-1")
    assert issued.token.startswith("mza_")
    assert issued.expires_at == START + 600
    assert issued.target.state is TargetState.ACTIVATION
    assert issued.target.public_key is None
    org.clock.advance(30)
    public_key = agent_key()
    registered = await org.registry.register_agent(
        issued.token,
        AgentRegistration(public_key, "web-1.internal", "0.1.0", region="eu-west"),
        Actor(address="ipv4:10.1.2.3:5555"),
    )
    target = registered.target
    assert registered.org_id == await org.registry.org_id()
    assert (target.id, target.name, target.state) == (
        issued.target.id,
        "web-1",
        TargetState.REGISTERED,
    )
    assert (target.public_key, target.hostname, target.agent_version, target.region) == (
        public_key,
        "web-1.internal",
        "0.1.0",
        "eu-west",
    )
    assert target.registered_at == START + 30
    stored, history = await org.registry.target_history(target.id)
    assert stored == target
    assert [(c.state, c.time) for c in history] == [
        (TargetState.ACTIVATION, START),
        (TargetState.REGISTERED, START + 30),
    ]
    assert await org.registry.agent_public_key(target.id) == public_key
    events = await org.events(target.id)
    assert [(e.target.state, e.outcome) for e in events] == [
        (TargetState.REGISTERED.value, audit_pb.EVENT_OUTCOME_ALLOWED),
        (TargetState.ACTIVATION.value, audit_pb.EVENT_OUTCOME_ALLOWED),
    ]
    assert events[0].actor.address == "ipv4:10.1.2.3:5555"


@pytest.mark.asyncio
async def test_the_name_comes_from_the_request_the_token_or_the_hostname(org: Org) -> None:
    named = await issue(org, "chosen")
    renamed = await org.registry.register_agent(
        named.token, AgentRegistration(agent_key(), "host-a", name="override")
    )
    assert renamed.target.name == "override"
    kept = await org.registry.register_agent(
        (await issue(org, "chosen")).token, AgentRegistration(agent_key(), "host-b")
    )
    assert kept.target.name == "chosen"
    unnamed = await issue(org, "")
    assert unnamed.target.name == ""
    from_host = await org.registry.register_agent(
        unnamed.token, AgentRegistration(agent_key(), "host-c")
    )
    assert from_host.target.name == "host-c"
    nameless = await issue(org, "")
    with pytest.raises(InvalidArgument, match="needs a name"):
        await org.registry.register_agent(nameless.token, AgentRegistration(agent_key()))


@pytest.mark.asyncio
async def test_an_administrator_issues_tokens_for_any_environment(org: Org) -> None:
    lab = await org.registry.create_environment("lab")
    issued = await org.registry.create_activation_token(
        registration_key=None, target_name="db-1", environment_id=lab.id, actor=Actor("admin-1")
    )
    assert issued.target.environment_id == lab.id
    (event,) = await org.events(issued.target.id)
    assert event.actor.user_id == "admin-1"
    assert "an administrator" in event.target.message
    default = await org.registry.create_activation_token(registration_key=None)
    assert default.target.environment_id == (await org.registry.default_environment()).id
    with pytest.raises(NotFound, match="environment"):
        await org.registry.create_activation_token(
            registration_key=None, environment_id=str(uuid.uuid4()), actor=Actor("admin-1")
        )
    assert (await org.denials())[0].startswith("no environment with id")


@pytest.mark.asyncio
async def test_a_registration_key_s_environment_wins(org: Org) -> None:
    lab = await org.registry.create_environment("lab")
    other = await org.registry.create_environment("other")
    secret = await org.registration_key(lab.id)
    issued = await org.registry.create_activation_token(
        registration_key=secret, environment_id=other.id
    )
    assert issued.target.environment_id == lab.id


@pytest.mark.asyncio
async def test_a_registration_key_is_not_an_activation_token(org: Org) -> None:
    secret = await org.registration_key()
    with pytest.raises(InvalidArgument, match="this is a registration key, not an activation"):
        await org.registry.register_agent(secret, AgentRegistration(agent_key(), "h"))
    for garbage in ("", "mza_short", "x" * 10_000):
        with pytest.raises(Unauthenticated, match="activation token is not valid"):
            await org.registry.register_agent(garbage, AgentRegistration(agent_key(), "h"))
    assert len(await org.denials()) == 4
    assert await all_targets(org) == []


@pytest.mark.asyncio
async def test_a_used_token_does_not_register_again(org: Org) -> None:
    issued = await issue(org)
    first_key = agent_key()
    await org.registry.register_agent(issued.token, AgentRegistration(first_key, "h"))
    org.clock.advance(1)
    with pytest.raises(Unauthenticated, match="used already"):
        await org.registry.register_agent(issued.token, AgentRegistration(agent_key(), "evil"))
    target = await org.registry.get_target(issued.target.id)
    assert (target.public_key, target.hostname, target.state) == (
        first_key,
        "h",
        TargetState.REGISTERED,
    )
    (denied,) = [e for e in await org.events() if e.outcome == audit_pb.EVENT_OUTCOME_DENIED]
    assert denied.target.target_id == issued.target.id
    assert "used already" in denied.target.message


@pytest.mark.asyncio
async def test_only_one_of_concurrent_registrations_with_a_token_wins(org: Org) -> None:
    issued = await issue(org)
    results = await asyncio.gather(
        *(
            org.registry.register_agent(issued.token, AgentRegistration(agent_key(), f"h{n}"))
            for n in range(4)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, Unauthenticated) and "used already" in r.message for r in losers)
    target = await org.registry.get_target(issued.target.id)
    assert target.public_key == winners[0].target.public_key


@pytest.mark.asyncio
async def test_an_expired_token_is_refused_and_its_target_removed(org: Org) -> None:
    issued = await issue(org)
    org.clock.advance(600)
    with pytest.raises(Unauthenticated, match="activation token expired at"):
        await org.registry.register_agent(issued.token, AgentRegistration(agent_key(), "h"))
    with pytest.raises(NotFound):
        await org.registry.get_target(issued.target.id)
    assert (await org.denials())[0].startswith("the activation token expired at")


@pytest.mark.asyncio
async def test_a_token_whose_target_was_deleted_is_refused(org: Org) -> None:
    issued = await issue(org)
    await org.registry.delete_target(issued.target.id, Actor("admin-1"))
    with pytest.raises(Unauthenticated, match="target of this activation token was deleted"):
        await org.registry.register_agent(issued.token, AgentRegistration(agent_key(), "h"))
    assert await all_targets(org) == []
    assert (await org.denials())[0] == "the target of this activation token was deleted"


#: Registrations refused for their content (each spends its token), with the expected message.
MALFORMED: list[tuple[AgentRegistration, str]] = [
    (AgentRegistration(b"\x01" * 31, "h"), "32-byte Ed25519 public key, got 31 bytes"),
    (AgentRegistration(b"\x01" * 33, "h"), "got 33 bytes"),
    (AgentRegistration(b"", "h" * 254), "got 0 bytes"),
    (AgentRegistration(agent_key(), "h" * 254), "the hostname is longer than 253"),
    (AgentRegistration(agent_key(), "h", name="n" * 254), "the target name is longer than 253"),
    (AgentRegistration(agent_key(), "h", "1" * 65), "the agent version is longer than 64"),
    (AgentRegistration(agent_key(), "h", region="r" * 65), "the region is longer than 64"),
    (AgentRegistration(agent_key(), "evil\x1b[2J"), "the hostname must be printable"),
    (AgentRegistration(agent_key(), "h", name="two\nlines"), "the target name must be printable"),
]


@pytest.mark.asyncio
async def test_a_malformed_registration_spends_the_token_and_registers_nothing(org: Org) -> None:
    for registration, message in MALFORMED:
        await _refused_registration(org, registration, message)


async def _refused_registration(org: Org, registration: AgentRegistration, message: str) -> None:
    issued = await issue(org)
    with pytest.raises(InvalidArgument, match=message) as refused:
        await org.registry.register_agent(issued.token, registration)
    assert "the activation token is spent" in refused.value.message
    # Nothing half-registered: the target is gone, and the token cannot be tried again.
    with pytest.raises(NotFound):
        await org.registry.get_target(issued.target.id)
    assert await all_targets(org) == []
    org.clock.advance(1)
    with pytest.raises(Unauthenticated, match="used already"):
        await org.registry.register_agent(issued.token, AgentRegistration(agent_key(), "h"))
    denials = await org.denials()
    assert message in denials[1]
    assert "used already" in denials[0]


@pytest.mark.asyncio
async def test_a_bad_target_name_at_activation_is_refused_and_audited(org: Org) -> None:
    secret = await org.registration_key()
    for bad in ("x" * 254, "tab\there"):
        with pytest.raises(InvalidArgument, match="the target name"):
            await org.registry.create_activation_token(registration_key=secret, target_name=bad)
    assert len(await org.denials()) == 2
    assert await all_targets(org) == []


@pytest.mark.asyncio
async def test_no_secret_reaches_the_audit_log(org: Org) -> None:
    created = await org.registry.create_registration_key("ci")
    issued = await org.registry.create_activation_token(registration_key=created.secret)
    await org.registry.register_agent(issued.token, AgentRegistration(agent_key(), "h"))
    for secret in (created.secret, issued.token):
        with pytest.raises(MrzapError):
            await org.registry.register_agent(secret, AgentRegistration(agent_key(), "h"))
    with pytest.raises(MrzapError):
        await org.registry.create_activation_token(registration_key=issued.token)
    events, _ = await org.audit.list_events(EventQuery(), 500)
    assert len(events) == 5
    for event in events:
        body = event.SerializeToString()
        assert created.secret.encode() not in body
        assert issued.token.encode() not in body
