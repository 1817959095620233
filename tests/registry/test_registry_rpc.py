"""RegistryService and AuditService over real gRPC with TLS, served by `start_server`: who may call
what (administrator, user, no session, PUBLIC with its own credential), and the lifecycle through
the running service, including its background sweep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pyotp
import pytest
import pytest_asyncio

from audit import ACCESS as AUDIT_ACCESS
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.audit.v1 import audit_service_pb2_grpc as audit_grpc
from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.auth.v1 import auth_service_pb2_grpc as auth_grpc
from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as policy_pb
from bastion.policy.v1 import policy_service_pb2_grpc as policy_grpc
from bastion.registry.v1 import registry_service_pb2 as pb
from bastion.registry.v1 import registry_service_pb2_grpc as pb_grpc
from mrzap import keys
from mrzap.login_proof import sign_login_proof
from mrzap.testing import TestIdentityProvider
from mrzapd._config import ServiceConfig
from mrzapd._server import RunningServer, start_server
from registry import ACCESS as REGISTRY_ACCESS

Metadata = tuple[tuple[str, str], ...]


@pytest_asyncio.fixture
async def server(idp: TestIdentityProvider, tmp_path: Path) -> AsyncIterator[RunningServer]:
    config = ServiceConfig.from_dict(
        {
            "server": {"listen": "127.0.0.1:0"},
            "idp": {
                "issuer": idp.issuer,
                "client_id": "zli",
                "allowed_email_domains": ["example.com"],
            },
            "admins": {"emails": ["admin@example.com"]},
            "registry": {"offline_timeout": 0.2, "sweep_interval": 0.05},
        },
        tmp_path,
    )
    running = await start_server(config)
    yield running
    await running.stop(0)


@pytest_asyncio.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    credentials = grpc.ssl_channel_credentials(server.tls.ca_cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as opened:
        yield opened


@pytest.fixture
def registry(channel: grpc.aio.Channel) -> pb_grpc.RegistryServiceAsyncStub:
    return pb_grpc.RegistryServiceStub(channel)


@pytest.fixture
def audit(channel: grpc.aio.Channel) -> audit_grpc.AuditServiceAsyncStub:
    return audit_grpc.AuditServiceStub(channel)


async def session(channel: grpc.aio.Channel, idp: TestIdentityProvider, sub: str) -> Metadata:
    """The bearer metadata of a session with MFA done, for user `sub` (`admin-sub` is admin)."""
    auth = auth_grpc.AuthServiceStub(channel)
    key = keys.generate_signing_key()
    token = idp.pk_token(keys.public_key_bytes(key), sub=sub, email=f"{sub[:-4]}@example.com")
    timestamp_ms = round(time.time() * 1000)
    answer = await auth.Login(
        auth_pb.LoginRequest(
            pk_token=token,
            timestamp_ms=timestamp_ms,
            proof=sign_login_proof(key, "login", token, timestamp_ms),
        )
    )
    metadata = (("authorization", f"Bearer {answer.session_token}"),)
    enrolment = await auth.EnrollMfa(auth_pb.EnrollMfaRequest(), metadata=metadata)
    code = pyotp.TOTP(enrolment.secret).now()
    await auth.VerifyMfa(auth_pb.VerifyMfaRequest(code=code), metadata=metadata)
    return metadata


@pytest_asyncio.fixture
async def admin(channel: grpc.aio.Channel, idp: TestIdentityProvider) -> Metadata:
    return await session(channel, idp, "admin-sub")


@pytest_asyncio.fixture
async def user(channel: grpc.aio.Channel, idp: TestIdentityProvider) -> Metadata:
    return await session(channel, idp, "alice-sub")


async def refused(call: Any, request: Any, **kwargs: Any) -> grpc.aio.AioRpcError:  # noqa: ANN401
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call(request, **kwargs)
    return failure.value


def agent_key() -> bytes:
    return keys.public_key_bytes(keys.generate_signing_key())


def test_every_method_is_classified() -> None:
    for module, access, name in (
        (pb, REGISTRY_ACCESS, "RegistryService"),
        (audit_pb, AUDIT_ACCESS, "AuditService"),
    ):
        service = module.DESCRIPTOR.services_by_name[name]
        assert {f"/{service.full_name}/{m.name}" for m in service.methods} == set(access)


def _admin_calls(
    registry: pb_grpc.RegistryServiceAsyncStub, audit: audit_grpc.AuditServiceAsyncStub
) -> list[tuple[Any, Any]]:
    return [
        (registry.CreateEnvironment, pb.CreateEnvironmentRequest(name="x")),
        (registry.ListEnvironments, pb.ListEnvironmentsRequest()),
        (registry.DeleteEnvironment, pb.DeleteEnvironmentRequest(environment_id="x")),
        (registry.CreateRegistrationKey, pb.CreateRegistrationKeyRequest(name="x")),
        (registry.ListRegistrationKeys, pb.ListRegistrationKeysRequest()),
        (registry.RotateRegistrationKey, pb.RotateRegistrationKeyRequest()),
        (registry.RevokeRegistrationKey, pb.RevokeRegistrationKeyRequest()),
        (registry.RenameTarget, pb.RenameTargetRequest(name="x")),
        (registry.DeleteTarget, pb.DeleteTargetRequest()),
    ]


@pytest.mark.asyncio
async def test_administrator_methods_refuse_anonymous_callers_and_users(
    registry: pb_grpc.RegistryServiceAsyncStub,
    audit: audit_grpc.AuditServiceAsyncStub,
    user: Metadata,
) -> None:
    for call, request in _admin_calls(registry, audit):
        anonymous = await refused(call, request)
        assert anonymous.code() is grpc.StatusCode.UNAUTHENTICATED, call
        forged = await refused(call, request, metadata=(("authorization", "Bearer forged"),))
        assert forged.code() is grpc.StatusCode.UNAUTHENTICATED, call
        denied = await refused(call, request, metadata=user)
        assert denied.code() is grpc.StatusCode.PERMISSION_DENIED, call
    for streaming in (
        audit.ExportEvents(audit_pb.ExportEventsRequest()),
        # Users may read the audit log and recordings, but only their own (tests/audit).
        audit.WatchRecording(audit_pb.WatchRecordingRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as stream_refused:
            await streaming.read()
        assert stream_refused.value.code() in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        )


@pytest.mark.asyncio
async def test_an_agent_registers_without_a_session(
    server: RunningServer,
    registry: pb_grpc.RegistryServiceAsyncStub,
    admin: Metadata,
    idp: TestIdentityProvider,
) -> None:
    created = await registry.CreateRegistrationKey(
        pb.CreateRegistrationKeyRequest(name="ci"), metadata=admin
    )
    issued = await registry.CreateActivationToken(
        pb.CreateActivationTokenRequest(registration_key=created.secret, target_name="web-1")
    )
    assert issued.target.state == pb.TARGET_STATE_ACTIVATION
    public_key = agent_key()
    registered = await registry.RegisterAgent(
        pb.RegisterAgentRequest(
            activation_token=issued.activation_token,
            public_key=public_key,
            hostname="web-1.internal",
            agent_version="0.1.0",
            region="eu",
        )
    )
    assert registered.target.id == issued.target.id
    assert registered.target.state == pb.TARGET_STATE_REGISTERED
    assert registered.target.public_key == public_key
    assert registered.org_id == await server.registry.org_id()
    pinned = [(k.key_id, k.public_key) for k in registered.grant_keys]
    assert pinned == [(k.key_id, k.public_key) for k in server.grant_keys.public_keys]
    assert (registered.idp.issuer, registered.idp.client_id) == (idp.issuer, "zli")
    assert list(registered.idp.allowed_email_domains) == ["example.com"]
    assert registered.idp.max_session_age.seconds == 12 * 3600
    again = await refused(
        registry.RegisterAgent,
        pb.RegisterAgentRequest(activation_token=issued.activation_token, public_key=agent_key()),
    )
    assert again.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "used already" in (again.details() or "")
    mixed_up = await refused(
        registry.RegisterAgent,
        pb.RegisterAgentRequest(activation_token=created.secret, public_key=agent_key()),
    )
    assert mixed_up.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "this is a registration key, not an activation token" in (mixed_up.details() or "")


@pytest.mark.asyncio
async def test_activation_without_a_key_needs_an_administrator(
    registry: pb_grpc.RegistryServiceAsyncStub, admin: Metadata, user: Metadata
) -> None:
    request = pb.CreateActivationTokenRequest(target_name="db-1")
    anonymous = await refused(registry.CreateActivationToken, request)
    assert anonymous.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "registration key" in (anonymous.details() or "")
    forged = await refused(
        registry.CreateActivationToken, request, metadata=(("authorization", "Bearer forged"),)
    )
    assert forged.code() is grpc.StatusCode.UNAUTHENTICATED
    denied = await refused(registry.CreateActivationToken, request, metadata=user)
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    issued = await registry.CreateActivationToken(request, metadata=admin)
    assert issued.activation_token.startswith("mza_")
    assert issued.target.name == "db-1"
    bad_key = await refused(
        registry.CreateActivationToken,
        pb.CreateActivationTokenRequest(registration_key="mzr_nope"),
        metadata=admin,
    )
    assert bad_key.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.asyncio
async def test_administrators_manage_environments_keys_and_targets(
    registry: pb_grpc.RegistryServiceAsyncStub, admin: Metadata
) -> None:
    lab = (
        await registry.CreateEnvironment(
            pb.CreateEnvironmentRequest(name="lab", description="tests"), metadata=admin
        )
    ).environment
    assert lab.offline_cleanup_timeout.seconds == 86400
    duplicate = await refused(
        registry.CreateEnvironment, pb.CreateEnvironmentRequest(name="lab"), metadata=admin
    )
    assert duplicate.code() is grpc.StatusCode.ALREADY_EXISTS
    listed = await registry.ListEnvironments(pb.ListEnvironmentsRequest(), metadata=admin)
    assert [e.name for e in listed.environments] == ["default", "lab"]

    created = await registry.CreateRegistrationKey(
        pb.CreateRegistrationKeyRequest(name="lab-key", environment_id=lab.id), metadata=admin
    )
    assert created.registration_key.environment_id == lab.id
    rotated = await registry.RotateRegistrationKey(
        pb.RotateRegistrationKeyRequest(registration_key_id=created.registration_key.id),
        metadata=admin,
    )
    assert rotated.registration_key.HasField("rotate_time")
    old = await refused(
        registry.CreateActivationToken,
        pb.CreateActivationTokenRequest(registration_key=created.secret),
    )
    assert old.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "rotated" in (old.details() or "")
    issued = await registry.CreateActivationToken(
        pb.CreateActivationTokenRequest(registration_key=rotated.secret, target_name="t1")
    )
    await registry.RegisterAgent(
        pb.RegisterAgentRequest(
            activation_token=issued.activation_token, public_key=agent_key(), hostname="h"
        )
    )
    keys_page = await registry.ListRegistrationKeys(
        pb.ListRegistrationKeysRequest(), metadata=admin
    )
    assert [k.name for k in keys_page.registration_keys] == ["lab-key"]
    assert keys_page.registration_keys[0].HasField("last_use_time")

    in_use = await refused(
        registry.DeleteEnvironment,
        pb.DeleteEnvironmentRequest(environment_id=lab.id),
        metadata=admin,
    )
    assert in_use.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "'t1'" in (in_use.details() or "")

    targets = await registry.ListTargets(
        pb.ListTargetsRequest(environment_ids=[lab.id], states=[pb.TARGET_STATE_REGISTERED]),
        metadata=admin,
    )
    assert [t.name for t in targets.targets] == ["t1"]
    bad_state = await refused(
        registry.ListTargets,
        pb.ListTargetsRequest(states=[pb.TargetState.ValueType(42)]),
        metadata=admin,
    )
    assert bad_state.code() is grpc.StatusCode.INVALID_ARGUMENT
    target_id = targets.targets[0].id
    renamed = await registry.RenameTarget(
        pb.RenameTargetRequest(target_id=target_id, name="t2"), metadata=admin
    )
    assert renamed.target.name == "t2"
    got = await registry.GetTarget(pb.GetTargetRequest(target_id=target_id), metadata=admin)
    assert [c.state for c in got.state_changes] == [
        pb.TARGET_STATE_ACTIVATION,
        pb.TARGET_STATE_REGISTERED,
    ]
    await registry.DeleteTarget(pb.DeleteTargetRequest(target_id=target_id), metadata=admin)
    gone = await refused(
        registry.GetTarget, pb.GetTargetRequest(target_id=target_id), metadata=admin
    )
    assert gone.code() is grpc.StatusCode.NOT_FOUND
    await registry.RevokeRegistrationKey(
        pb.RevokeRegistrationKeyRequest(registration_key_id=created.registration_key.id),
        metadata=admin,
    )
    revoked = await refused(
        registry.CreateActivationToken,
        pb.CreateActivationTokenRequest(registration_key=rotated.secret),
    )
    assert "revoked" in (revoked.details() or "")
    await registry.DeleteEnvironment(
        pb.DeleteEnvironmentRequest(environment_id=lab.id), metadata=admin
    )


@pytest.mark.asyncio
async def test_administrators_search_the_audit_log(
    registry: pb_grpc.RegistryServiceAsyncStub,
    audit: audit_grpc.AuditServiceAsyncStub,
    admin: Metadata,
) -> None:
    refusal = await refused(
        registry.RegisterAgent,
        pb.RegisterAgentRequest(activation_token="mza_" + "A" * 43, public_key=agent_key()),
    )
    assert refusal.code() is grpc.StatusCode.UNAUTHENTICATED
    issued = await registry.CreateActivationToken(
        pb.CreateActivationTokenRequest(target_name="audited"), metadata=admin
    )
    denied = await audit.ListEvents(
        audit_pb.ListEventsRequest(
            filter=audit_pb.EventFilter(outcomes=[audit_pb.EVENT_OUTCOME_DENIED])
        ),
        metadata=admin,
    )
    (event,) = denied.events
    assert event.target.message == "the activation token is not valid"
    assert event.actor.address.startswith("ipv4:127.0.0.1:")
    about = await audit.ListEvents(
        audit_pb.ListEventsRequest(
            filter=audit_pb.EventFilter(target_id=issued.target.id, text="ADMINISTRATOR")
        ),
        metadata=admin,
    )
    assert [e.target.state for e in about.events] == [pb.TARGET_STATE_ACTIVATION]
    assert about.events[0].actor.user_id
    paged = await audit.ListEvents(audit_pb.ListEventsRequest(page_size=1), metadata=admin)
    assert len(paged.events) == 1
    assert paged.next_page_token
    recordings = await audit.ListRecordings(audit_pb.ListRecordingsRequest(), metadata=admin)
    assert list(recordings.recordings) == []
    exported = [
        response.event
        async for response in audit.ExportEvents(
            audit_pb.ExportEventsRequest(
                filter=audit_pb.EventFilter(outcomes=[audit_pb.EVENT_OUTCOME_DENIED])
            ),
            metadata=admin,
        )
    ]
    assert [e.id for e in exported][-1] == event.id  # oldest first


@pytest.mark.asyncio
async def test_the_running_service_sweeps_silent_targets_offline(
    server: RunningServer, registry: pb_grpc.RegistryServiceAsyncStub, admin: Metadata
) -> None:
    issued = await registry.CreateActivationToken(
        pb.CreateActivationTokenRequest(target_name="sleepy"), metadata=admin
    )
    await registry.RegisterAgent(
        pb.RegisterAgentRequest(
            activation_token=issued.activation_token, public_key=agent_key(), hostname="h"
        )
    )
    target_id = issued.target.id
    await server.registry.agent_connected(target_id, "b-1", "ipv4:127.0.0.1:1")
    request = pb.GetTargetRequest(target_id=target_id)
    # offline_timeout is 0.2 s and the sweep runs every 0.05 s: OFFLINE well within 5 s.
    async with asyncio.timeout(5):
        while True:
            got = await registry.GetTarget(request, metadata=admin)
            if got.target.state == pb.TARGET_STATE_OFFLINE:
                break
            await asyncio.sleep(0.05)
    assert got.state_changes[-1].reason == "no keepalive for 0.2 s"


@pytest.mark.asyncio
async def test_api_keys_act_with_their_rights_and_are_named_in_the_audit_log(
    channel: grpc.aio.Channel,
    registry: pb_grpc.RegistryServiceAsyncStub,
    audit: audit_grpc.AuditServiceAsyncStub,
    admin: Metadata,
) -> None:
    auth = auth_grpc.AuthServiceStub(channel)
    keys_made = {
        rights: await auth.CreateApiKey(
            auth_pb.CreateApiKeyRequest(name=f"ci-{rights}", admin=rights == "admin"),
            metadata=admin,
        )
        for rights in ("admin", "user")
    }
    as_user = (("authorization", f"Bearer {keys_made['user'].secret}"),)
    denied = await refused(
        registry.CreateActivationToken, pb.CreateActivationTokenRequest(), metadata=as_user
    )
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    as_admin = (("authorization", f"Bearer {keys_made['admin'].secret}"),)
    issued = await registry.CreateActivationToken(
        pb.CreateActivationTokenRequest(target_name="from-ci"), metadata=as_admin
    )
    await registry.DeleteTarget(
        pb.DeleteTargetRequest(target_id=issued.target.id), metadata=as_admin
    )
    events = await audit.ListEvents(
        audit_pb.ListEventsRequest(filter=audit_pb.EventFilter(target_id=issued.target.id)),
        metadata=admin,
    )
    assert [(e.actor.api_key_id, e.actor.user_id) for e in events.events] == [
        (keys_made["admin"].api_key.id, ""),
        (keys_made["admin"].api_key.id, ""),
    ]


@pytest.mark.asyncio
async def test_the_org_id_and_grant_keys_survive_a_restart(
    idp: TestIdentityProvider, tmp_path: Path
) -> None:
    config = ServiceConfig.from_dict(
        {"server": {"listen": "127.0.0.1:0"}, "idp": {"issuer": idp.issuer, "client_id": "zli"}},
        tmp_path,
    )
    first = await start_server(config)
    org_id, grant_keys = await first.registry.org_id(), first.grant_keys.public_keys
    await first.stop(0)
    second = await start_server(config)
    try:
        assert await second.registry.org_id() == org_id
        assert second.grant_keys.public_keys == grant_keys
        assert [p.name for p in (tmp_path / "keys").iterdir()] == [
            f"grant-{grant_keys[0].key_id}.key"
        ]
    finally:
        await second.stop(0)


async def _new_target(
    registry: pb_grpc.RegistryServiceAsyncStub, admin: Metadata, name: str, environment_id: str = ""
) -> str:
    issued = await registry.CreateActivationToken(
        pb.CreateActivationTokenRequest(target_name=name, environment_id=environment_id),
        metadata=admin,
    )
    return issued.target.id


def _shells(
    name: str,
    emails: list[str],
    target_ids: list[str] = [],  # noqa: B006 - never mutated
    environment_ids: list[str] = [],  # noqa: B006 - never mutated
) -> policy_pb.CreatePolicyRequest:
    return policy_pb.CreatePolicyRequest(
        policy=policy_pb.Policy(
            name=name,
            target_connect=policy_pb.TargetConnectPolicy(
                subjects=policy_pb.SubjectSelector(user_emails=emails),
                targets=policy_pb.TargetSelector(
                    target_ids=target_ids, environment_ids=environment_ids
                ),
                target_users=["dev"],
                verbs=[mrzap_pb2.VERB_SHELL],
            ),
        )
    )


async def _names(
    registry: pb_grpc.RegistryServiceAsyncStub,
    who: Metadata,
    name: str = "",
    environment_ids: tuple[str, ...] = (),
) -> list[str]:
    request = pb.ListTargetsRequest(name=name, environment_ids=environment_ids)
    answer = await registry.ListTargets(request, metadata=who)
    return [t.name for t in answer.targets]


@pytest.mark.asyncio
async def test_users_see_only_the_targets_a_policy_lets_them_reach(
    channel: grpc.aio.Channel,
    registry: pb_grpc.RegistryServiceAsyncStub,
    admin: Metadata,
    user: Metadata,
) -> None:
    policies = policy_grpc.PolicyServiceStub(channel)
    lab = (
        await registry.CreateEnvironment(pb.CreateEnvironmentRequest(name="lab"), metadata=admin)
    ).environment
    web = await _new_target(registry, admin, "web-1")
    await _new_target(registry, admin, "db-1", lab.id)
    await _new_target(registry, admin, "db-2", lab.id)
    ops = await _new_target(registry, admin, "ops-1")
    # No policy names alice yet: she sees nothing, and a target's id gets the unknown-id answer.
    assert await _names(registry, user) == []
    # Someone else's policy covers ops-1; alice's covers web-1 by id and every target in lab.
    await policies.CreatePolicy(_shells("carol", ["carol@example.com"], [ops]), metadata=admin)
    await policies.CreatePolicy(
        _shells("alice", ["Alice@Example.com"], [web], [lab.id]), metadata=admin
    )

    assert await _names(registry, admin) == ["db-1", "db-2", "ops-1", "web-1"]
    assert await _names(registry, user) == ["db-1", "db-2", "web-1"]
    assert await _names(registry, user, name="ops-1") == []
    assert await _names(registry, user, name="web-1") == ["web-1"]
    # Filters and the scope combine, and pages stay full with the scope applied in the query.
    assert await _names(registry, user, environment_ids=(lab.id,)) == ["db-1", "db-2"]
    first = await registry.ListTargets(pb.ListTargetsRequest(page_size=2), metadata=user)
    assert [t.name for t in first.targets] == ["db-1", "db-2"]
    rest = await registry.ListTargets(
        pb.ListTargetsRequest(page_size=2, page_token=first.next_page_token), metadata=user
    )
    assert ([t.name for t in rest.targets], rest.next_page_token) == (["web-1"], "")

    got = await registry.GetTarget(pb.GetTargetRequest(target_id=web), metadata=user)
    assert got.target.name == "web-1"
    hidden = await refused(registry.GetTarget, pb.GetTargetRequest(target_id=ops), metadata=user)
    assert hidden.code() is grpc.StatusCode.NOT_FOUND
    # Word for word the answer for an id that does not exist: no probing for targets.
    assert hidden.details() == f"no target with id {ops!r}"
    assert (await registry.GetTarget(pb.GetTargetRequest(target_id=ops), metadata=admin)).target
    # Seeing targets does not make a user an administrator of them.
    rename = await refused(
        registry.RenameTarget, pb.RenameTargetRequest(target_id=web, name="x"), metadata=user
    )
    assert rename.code() is grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.asyncio
async def test_a_user_api_key_sees_the_targets_its_policies_name(
    channel: grpc.aio.Channel, registry: pb_grpc.RegistryServiceAsyncStub, admin: Metadata
) -> None:
    auth = auth_grpc.AuthServiceStub(channel)
    key = await auth.CreateApiKey(auth_pb.CreateApiKeyRequest(name="ci"), metadata=admin)
    as_key = (("authorization", f"Bearer {key.secret}"),)
    web = await _new_target(registry, admin, "web-1")
    await _new_target(registry, admin, "web-2")
    assert await _names(registry, as_key) == []
    await policy_grpc.PolicyServiceStub(channel).CreatePolicy(
        policy_pb.CreatePolicyRequest(
            policy=policy_pb.Policy(
                name="ci",
                target_connect=policy_pb.TargetConnectPolicy(
                    subjects=policy_pb.SubjectSelector(api_key_ids=[key.api_key.id]),
                    targets=policy_pb.TargetSelector(target_ids=[web]),
                    target_users=["deploy"],
                    verbs=[mrzap_pb2.VERB_EXEC],
                ),
            )
        ),
        metadata=admin,
    )
    assert await _names(registry, as_key) == ["web-1"]
