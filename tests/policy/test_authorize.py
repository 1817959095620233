"""The authorization interceptor over real gRPC with TLS, with the real auth role and audit log.

The decider here is scripted (it says allow or deny, or crashes) so that each verdict's handling
by the interceptor can be checked on its own: what reaches the servicer, the status and message
the caller gets, and the audit event. The real decider with the shipped Rego is exercised through
`mrzapd` in test_servicer.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from audit import ACCESS as AUDIT_ACCESS
from audit import MIGRATIONS as AUDIT_MIGRATIONS
from audit import AuditLog, AuditServicer, AuditStore, EventQuery
from auth import MIGRATIONS as AUTH_MIGRATIONS
from auth import Access, AuthConfig, AuthService, AuthStore, SessionInterceptor
from auth._servicer import ACCESS as AUTH_ACCESS
from auth._servicer import AuthServicer
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.audit.v1 import audit_service_pb2_grpc as audit_grpc
from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.auth.v1 import auth_service_pb2_grpc as auth_grpc
from mrzap.jwks import HttpJwksSource
from mrzap.pktoken import PkTokenVerifier
from mrzap.storage import Database, sqlite_url
from mrzap.testing import TestIdentityProvider
from mrzap.tls import ensure_server_tls
from policy import AuthorizationInterceptor
from policy._model import ApiAccess, ApiCall, Decision, Effect, Principal, Reason, TargetAccess

from ._rpc import bearer, login, refused

_AUTH = "/bastion.auth.v1.AuthService/"


@dataclasses.dataclass
class ScriptedDecider:
    """Allows or denies as told, or crashes; remembers what it was asked."""

    allow: bool = True
    crash: bool = False
    asked: list[tuple[Principal, ApiCall]] = dataclasses.field(default_factory=list)

    async def decide(
        self, principal: Principal, action: TargetAccess | ApiCall, *, explain: bool = False
    ) -> Decision:
        assert isinstance(action, ApiCall)
        self.asked.append((principal, action))
        if self.crash:
            raise RuntimeError("engine exploded")
        effect = Effect.ALLOW if self.allow else Effect.DENY
        return Decision(
            decision_id=str(uuid.uuid4()),
            allowed=self.allow,
            reasons=(Reason("p-1", "api rules", effect, f"scripted {effect.value}"),),
            policy_ids=("p-1",) if self.allow else (),
            max_session_duration=0.0,
            record_input=False,
            record_output=False,
            decided_at=0.0,
        )


@dataclasses.dataclass
class Service:
    auth: auth_grpc.AuthServiceAsyncStub
    audit_stub: audit_grpc.AuditServiceAsyncStub
    log: AuditLog
    decider: ScriptedDecider
    channel: grpc.aio.Channel

    async def api_events(self) -> list[audit_pb.AuditEvent]:
        events, _ = await self.log.list_events(
            EventQuery(kinds=frozenset({audit_pb.EVENT_KIND_API_CALL}))
        )
        return events


async def _serve(
    idp: TestIdentityProvider, root: Path, access: Mapping[str, Access]
) -> AsyncIterator[Service]:
    db = Database(sqlite_url(root / "mrzap.db"))
    await asyncio.to_thread(db.migrate, [AUTH_MIGRATIONS, AUDIT_MIGRATIONS])
    config = AuthConfig(
        idp=idp.config(client_id="zli"),
        admin_emails=frozenset({"admin@example.com"}),
        groups_claim="groups",
    )
    auth = AuthService(config, AuthStore(db), PkTokenVerifier(config.idp, HttpJwksSource()))
    log = AuditLog(AuditStore(db))
    decider = ScriptedDecider()
    interceptor = AuthorizationInterceptor(SessionInterceptor(auth, access), decider, log)
    server = grpc.aio.server(interceptors=[interceptor])
    auth_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth), server)
    audit_grpc.add_AuditServiceServicer_to_server(AuditServicer(log), server)
    tls = ensure_server_tls(root / "tls", ["127.0.0.1"])
    credentials = grpc.ssl_server_credentials(
        [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        channel_credentials = grpc.ssl_channel_credentials(tls.ca_cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials) as channel:
            yield Service(
                auth_grpc.AuthServiceStub(channel),
                audit_grpc.AuditServiceStub(channel),
                log,
                decider,
                channel,
            )
    finally:
        await server.stop(0)
        await db.close()


@pytest_asyncio.fixture
async def service(idp: TestIdentityProvider, tmp_path: Path) -> AsyncIterator[Service]:
    async for started in _serve(idp, tmp_path, {**AUTH_ACCESS, **AUDIT_ACCESS}):
        yield started


@pytest.mark.asyncio
async def test_an_allowed_call_reaches_the_servicer_and_is_audited(
    service: Service, idp: TestIdentityProvider
) -> None:
    token = await login(service.channel, idp, "dev@example.com", ["developers"])
    me = await service.auth.WhoAmI(auth_pb.WhoAmIRequest(), metadata=bearer(token))
    assert me.user.email == "dev@example.com"
    principal, call = service.decider.asked[-1]
    assert call == ApiCall(_AUTH + "WhoAmI", ApiAccess.LOGIN)
    assert principal.email == "dev@example.com"
    assert principal.groups == ("developers",)
    assert principal.user_id == me.user.id
    assert not principal.admin
    assert principal.mfa_verified_at is not None
    event = (await service.api_events())[0]
    assert event.outcome == audit_pb.EVENT_OUTCOME_ALLOWED
    assert event.api_call.method == _AUTH + "WhoAmI"
    assert event.api_call.status_code == grpc.StatusCode.OK.value[0]
    assert event.api_call.decision_id
    assert event.actor.user_id == me.user.id
    assert event.actor.address.startswith("ipv4:127.0.0.1:")
    assert [r.message for r in event.reasons] == ["scripted allow"]


@pytest.mark.asyncio
async def test_every_call_is_audited_once_and_no_event_holds_a_secret(
    service: Service, idp: TestIdentityProvider
) -> None:
    token = await login(service.channel, idp, "dev@example.com")
    events = await service.api_events()
    # GetLoginConfiguration is not called by login(); Login, EnrollMfa, VerifyMfa are.
    assert [e.api_call.method.rsplit("/", 1)[1] for e in reversed(events)] == [
        "Login",
        "EnrollMfa",
        "VerifyMfa",
    ]
    assert all(e.outcome == audit_pb.EVENT_OUTCOME_ALLOWED for e in events)
    assert not events[-1].actor.user_id  # Login is PUBLIC: decided for an anonymous principal
    for event in events:
        assert token.encode() not in event.SerializeToString()


@pytest.mark.asyncio
async def test_a_denial_stops_the_call_with_the_reasons_and_is_audited(
    service: Service, idp: TestIdentityProvider
) -> None:
    token = await login(service.channel, idp, "dev@example.com")
    service.decider.allow = False
    message = await refused(
        service.auth.Logout(auth_pb.LogoutRequest(), metadata=bearer(token)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert message == "scripted deny"
    event = (await service.api_events())[0]
    assert event.outcome == audit_pb.EVENT_OUTCOME_DENIED
    assert event.api_call.status_code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert event.api_call.decision_id
    # The servicer never ran: the session was not ended.
    service.decider.allow = True
    await service.auth.WhoAmI(auth_pb.WhoAmIRequest(), metadata=bearer(token))


@pytest.mark.asyncio
async def test_an_engine_crash_denies_the_call(service: Service, idp: TestIdentityProvider) -> None:
    token = await login(service.channel, idp, "dev@example.com")
    service.decider.crash = True
    message = await refused(
        service.auth.WhoAmI(auth_pb.WhoAmIRequest(), metadata=bearer(token)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "policy engine is unavailable" in message
    assert "exploded" not in message  # the engine's internals stay in the service's log
    event = (await service.api_events())[0]  # refused, and audited like every other call
    assert event.outcome == audit_pb.EVENT_OUTCOME_DENIED
    assert event.api_call.method == _AUTH + "WhoAmI"
    assert [r.message for r in event.reasons] == [message]


@pytest.mark.asyncio
async def test_an_unauthenticated_call_is_refused_before_any_decision_and_audited(
    service: Service,
) -> None:
    await refused(
        service.auth.WhoAmI(auth_pb.WhoAmIRequest(), metadata=bearer("forged")),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert service.decider.asked == []
    event = (await service.api_events())[0]
    assert event.outcome == audit_pb.EVENT_OUTCOME_DENIED
    assert event.api_call.status_code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert not event.api_call.decision_id
    assert b"forged" not in event.SerializeToString()


@pytest.mark.asyncio
async def test_an_admin_method_stays_closed_to_users_even_if_a_policy_allows_it(
    service: Service, idp: TestIdentityProvider
) -> None:
    token = await login(service.channel, idp, "dev@example.com")
    message = await refused(
        service.auth.ListUsers(auth_pb.ListUsersRequest(), metadata=bearer(token)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "only administrators may do this" in message
    assert service.decider.asked[-1][1].access is ApiAccess.ADMIN
    event = (await service.api_events())[0]
    assert event.outcome == audit_pb.EVENT_OUTCOME_DENIED
    admin = await login(service.channel, idp, "admin@example.com")
    users = await service.auth.ListUsers(auth_pb.ListUsersRequest(), metadata=bearer(admin))
    assert len(users.users) == 2
    assert service.decider.asked[-1][0].admin


@pytest.mark.asyncio
async def test_an_unclassified_method_is_refused_and_audited(
    idp: TestIdentityProvider, tmp_path: Path
) -> None:
    access = {m: a for m, a in AUTH_ACCESS.items() if not m.endswith("/GetLoginConfiguration")}
    async for service in _serve(idp, tmp_path, access):
        message = await refused(
            service.auth.GetLoginConfiguration(auth_pb.GetLoginConfigurationRequest()),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert "is not open to any caller" in message
        assert service.decider.asked == []
        event = (await service.api_events())[0]
        assert event.outcome == audit_pb.EVENT_OUTCOME_DENIED
        assert event.api_call.method == _AUTH + "GetLoginConfiguration"


@pytest.mark.asyncio
async def test_a_stream_is_decided_and_audited_when_it_opens(
    service: Service, idp: TestIdentityProvider
) -> None:
    admin = await login(service.channel, idp, "admin@example.com")
    service.decider.allow = False
    stream = service.audit_stub.ExportEvents(audit_pb.ExportEventsRequest(), metadata=bearer(admin))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async for _ in stream:
            pass
    assert failure.value.code() is grpc.StatusCode.PERMISSION_DENIED
    event = (await service.api_events())[0]
    assert event.api_call.method == "/bastion.audit.v1.AuditService/ExportEvents"
    assert event.outcome == audit_pb.EVENT_OUTCOME_DENIED


@pytest.mark.asyncio
async def test_an_api_key_is_decided_as_its_key(
    service: Service, idp: TestIdentityProvider
) -> None:
    admin = await login(service.channel, idp, "admin@example.com")
    created = await service.auth.CreateApiKey(
        auth_pb.CreateApiKeyRequest(name="ci", admin=True), metadata=bearer(admin)
    )
    await service.auth.ListApiKeys(auth_pb.ListApiKeysRequest(), metadata=bearer(created.secret))
    principal, _ = service.decider.asked[-1]
    assert principal == Principal(admin=True, api_key_id=created.api_key.id)
    event = (await service.api_events())[0]
    assert event.actor.api_key_id == created.api_key.id
    assert created.secret.encode() not in event.SerializeToString()
