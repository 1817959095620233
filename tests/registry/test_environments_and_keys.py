"""Environments and registration keys on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from sqlalchemy import text

from audit import Actor
from mrzap.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from registry import DEFAULT_ENVIRONMENT, TargetFilter

from .conftest import Org


@pytest.mark.asyncio
async def test_the_organisation_and_its_default_environment_exist_from_the_start(org: Org) -> None:
    org_id = await org.registry.org_id()
    assert str(uuid.UUID(org_id)) == org_id
    assert await org.registry.org_id() == org_id
    environments, next_token = await org.registry.list_environments()
    assert [e.name for e in environments] == [DEFAULT_ENVIRONMENT]
    assert next_token == ""
    assert org.registry.cleanup_timeout(environments[0]) == 86400


@pytest.mark.asyncio
async def test_environments_have_unique_valid_names(org: Org) -> None:
    production = await org.registry.create_environment("production", "live systems", 3600)
    assert (production.name, production.description) == ("production", "live systems")
    assert org.registry.cleanup_timeout(production) == 3600
    with pytest.raises(AlreadyExists, match="production"):
        await org.registry.create_environment("production")
    for bad in ("", "   ", "x" * 254, "line\nbreak", "bell\a"):
        with pytest.raises(InvalidArgument, match="environment name"):
            await org.registry.create_environment(bad)
    with pytest.raises(InvalidArgument, match="offline_cleanup_timeout"):
        await org.registry.create_environment("staging", offline_cleanup_timeout_s=-1)
    staging = await org.registry.create_environment("  staging ")
    assert staging.name == "staging"
    assert staging.offline_cleanup_timeout_s is None


@pytest.mark.asyncio
async def test_environments_page_in_name_order(org: Org) -> None:
    for name in ("e", "b", "d", "a", "c"):
        await org.registry.create_environment(name)
    names: list[str] = []
    token = ""
    while True:
        page, token = await org.registry.list_environments(2, token)
        names += [e.name for e in page]
        if not token:
            break
    assert names == ["a", "b", "c", "d", DEFAULT_ENVIRONMENT, "e"]
    with pytest.raises(InvalidArgument, match="page_size"):
        await org.registry.list_environments(-1)
    with pytest.raises(InvalidArgument, match="page token"):
        await org.registry.list_environments(2, "garbage!")


@pytest.mark.asyncio
async def test_an_environment_with_targets_or_keys_is_not_deleted(org: Org) -> None:
    lab = await org.registry.create_environment("lab")
    registered = await org.register("lab-1", lab.id)
    with pytest.raises(FailedPrecondition, match=r"still has 1 target\(s\) \('lab-1'\)"):
        await org.registry.delete_environment(lab.id)
    await org.registry.delete_target(registered.target.id)
    with pytest.raises(FailedPrecondition, match="registration keys \\('ci'\\): revoke them"):
        await org.registry.delete_environment(lab.id)
    keys, _ = await org.registry.list_registration_keys()
    await org.registry.revoke_registration_key(keys[0].id)
    await org.registry.delete_environment(lab.id)
    with pytest.raises(NotFound):
        await org.registry.get_environment(lab.id)
    with pytest.raises(NotFound):
        await org.registry.delete_environment(lab.id)
    with pytest.raises(NotFound):
        await org.registry.delete_environment("not-a-uuid")


@pytest.mark.asyncio
async def test_the_default_environment_is_not_deleted(org: Org) -> None:
    default = await org.registry.default_environment()
    with pytest.raises(FailedPrecondition, match="default environment"):
        await org.registry.delete_environment(default.id)


@pytest.mark.asyncio
async def test_only_the_hash_of_a_registration_key_is_stored(org: Org) -> None:
    created = await org.registry.create_registration_key("ci")
    assert created.secret.startswith(f"{created.key.id}_")
    assert created.key.id.startswith("mzr_")
    assert created.secret not in repr(created)
    async with org.db.session() as s:
        (row,) = (await s.execute(text("SELECT * FROM registry_registration_keys"))).all()
    stored = [bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row]
    assert not any(created.secret.encode() in value for value in stored)
    assert hashlib.sha256(created.secret.encode()).digest() in stored


@pytest.mark.asyncio
async def test_registration_keys_list_without_revoked_ones_and_record_their_use(org: Org) -> None:
    default = await org.registry.default_environment()
    first = await org.registry.create_registration_key("alpha", ttl_s=3600)
    assert first.key.environment_id == default.id
    assert first.key.expires_at == org.clock.now() + 3600
    second = await org.registry.create_registration_key("beta")
    third = await org.registry.create_registration_key("gamma")
    await org.registry.revoke_registration_key(second.key.id)
    await org.registry.revoke_registration_key(second.key.id)  # revoking again changes nothing
    page, token = await org.registry.list_registration_keys(1)
    rest, end = await org.registry.list_registration_keys(1, token)
    assert ([k.id for k in page + rest], end) == ([first.key.id, third.key.id], "")
    assert page[0].last_used_at is None
    org.clock.advance(5)
    await org.registry.create_activation_token(registration_key=first.secret)
    keys, _ = await org.registry.list_registration_keys()
    assert keys[0].last_used_at == org.clock.now()


@pytest.mark.asyncio
async def test_bad_registration_key_requests_are_refused(org: Org) -> None:
    with pytest.raises(InvalidArgument, match="key name"):
        await org.registry.create_registration_key("")
    with pytest.raises(InvalidArgument, match="ttl"):
        await org.registry.create_registration_key("ci", ttl_s=-5)
    with pytest.raises(NotFound, match="environment"):
        await org.registry.create_registration_key("ci", str(uuid.uuid4()))
    with pytest.raises(NotFound):
        await org.registry.rotate_registration_key("mzr_0000000000000000")
    with pytest.raises(NotFound):
        await org.registry.revoke_registration_key("mzr_0000000000000000")
    revoked = await org.registry.create_registration_key("old")
    await org.registry.revoke_registration_key(revoked.key.id)
    with pytest.raises(FailedPrecondition, match="revoked"):
        await org.registry.rotate_registration_key(revoked.key.id)


@pytest.mark.asyncio
async def test_a_rotated_key_s_old_secret_stops_working(org: Org) -> None:
    old = await org.registry.create_registration_key("ci")
    new = await org.registry.rotate_registration_key(old.key.id)
    assert new.key.id == old.key.id
    assert new.secret != old.secret
    assert new.key.rotated_at == org.clock.now()
    with pytest.raises(Unauthenticated, match="was rotated"):
        await org.registry.create_activation_token(registration_key=old.secret)
    assert (await org.denials())[
        0
    ] == f"registration key {old.key.id} was rotated: its old secret no longer works"
    issued = await org.registry.create_activation_token(registration_key=new.secret)
    assert issued.token.startswith("mza_")


@pytest.mark.asyncio
async def test_revoked_expired_and_unknown_keys_are_refused_and_audited(org: Org) -> None:
    revoked = await org.registry.create_registration_key("revoked")
    await org.registry.revoke_registration_key(revoked.key.id)
    expiring = await org.registry.create_registration_key("expiring", ttl_s=60)
    valid = await org.registry.create_registration_key("valid")
    forged = valid.secret[:-4] + ("AAAA" if not valid.secret.endswith("AAAA") else "BBBB")
    org.clock.advance(60)
    cases = [
        (revoked.secret, Unauthenticated, f"registration key {revoked.key.id} was revoked"),
        (expiring.secret, Unauthenticated, f"registration key {expiring.key.id} expired at"),
        (forged, Unauthenticated, "the registration key is not valid"),
        ("mzr_0123456789abcdef_" + "A" * 43, Unauthenticated, "the registration key is not valid"),
        ("hunter2", Unauthenticated, "the registration key is not valid"),
        ("mzr_short", Unauthenticated, "the registration key is not valid"),
        ("mza_" + "A" * 43, InvalidArgument, "this is an activation token, not a registration key"),
        (
            "mzk_" + "0" * 16 + "_" + "A" * 43,
            InvalidArgument,
            "this is an API key, not a registration key",
        ),
    ]
    for secret, error, message in cases:
        org.clock.advance(1)
        with pytest.raises(error, match=message):
            await org.registry.create_activation_token(
                registration_key=secret, actor=Actor(address="ipv4:10.0.0.9:4000")
            )
    denials = await org.denials()
    assert len(denials) == len(cases)
    for (_, _, message), denial in zip(cases, reversed(denials), strict=True):
        assert denial.startswith(message)
    events = await org.events()
    assert {e.actor.address for e in events} == {"ipv4:10.0.0.9:4000"}
    # Nothing was created by the refused calls, and no secret reached the log.
    assert (await org.registry.list_targets(TargetFilter()))[0] == []
    for event in events:
        for secret, _, _ in cases:
            assert secret.encode() not in event.SerializeToString()
