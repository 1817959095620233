"""AuthService over real gRPC with TLS: every method's access class is enforced before it runs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import cast

import grpc
import grpc.aio
import pyotp
import pytest
import pytest_asyncio

from auth import AuthService
from auth._interceptor import SessionInterceptor
from auth._servicer import ACCESS, AuthServicer
from bastion.auth.v1 import auth_service_pb2 as pb
from bastion.auth.v1 import auth_service_pb2_grpc as pb_grpc
from mrzap import keys
from mrzap.login_proof import sign_login_proof
from mrzap.testing import TestIdentityProvider
from mrzapd._server import RunningServer


@pytest_asyncio.fixture
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.AuthServiceAsyncStub]:
    credentials = grpc.ssl_channel_credentials(server.tls.ca_cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        yield pb_grpc.AuthServiceStub(channel)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def login(
    stub: pb_grpc.AuthServiceAsyncStub, idp: TestIdentityProvider, sub: str = "alice-sub"
) -> pb.LoginResponse:
    key = keys.generate_signing_key()
    token = idp.pk_token(keys.public_key_bytes(key), sub=sub, email=f"{sub[:-4]}@example.com")
    timestamp_ms = round(time.time() * 1000)
    request = pb.LoginRequest(
        pk_token=token,
        timestamp_ms=timestamp_ms,
        proof=sign_login_proof(key, "login", token, timestamp_ms),
    )
    return await stub.Login(request)


async def logged_in(stub: pb_grpc.AuthServiceAsyncStub, idp: TestIdentityProvider, sub: str) -> str:
    """A session token with MFA done."""
    answer = await login(stub, idp, sub)
    token = answer.session_token
    enrolment = await stub.EnrollMfa(pb.EnrollMfaRequest(), metadata=bearer(token))
    code = pyotp.TOTP(enrolment.secret).now()
    await stub.VerifyMfa(pb.VerifyMfaRequest(code=code), metadata=bearer(token))
    return token


def test_every_auth_method_is_classified() -> None:
    service = pb.DESCRIPTOR.services_by_name["AuthService"]
    methods = {f"/{service.full_name}/{method.name}" for method in service.methods}
    assert methods == set(ACCESS)


@pytest.mark.asyncio
async def test_public_methods_need_no_session(
    stub: pb_grpc.AuthServiceAsyncStub, idp: TestIdentityProvider
) -> None:
    config = await stub.GetLoginConfiguration(pb.GetLoginConfigurationRequest())
    assert (config.issuer, config.client_id, config.mfa_required) == (idp.issuer, "zli", True)
    assert "openid" in config.scopes


@pytest.mark.asyncio
async def test_calls_without_a_session_are_refused(stub: pb_grpc.AuthServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.WhoAmI(pb.WhoAmIRequest())
    assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "zli login" in (missing.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer("made-up-token"))
    assert forged.value.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.asyncio
async def test_mfa_pending_session_reaches_only_the_login_methods(
    stub: pb_grpc.AuthServiceAsyncStub, idp: TestIdentityProvider
) -> None:
    answer = await login(stub, idp)
    assert answer.session.mfa_status == pb.MFA_STATUS_ENROLMENT_REQUIRED
    pending = bearer(answer.session_token)
    who = await stub.WhoAmI(pb.WhoAmIRequest(), metadata=pending)
    assert who.user.email == "alice@example.com"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListUsers(pb.ListUsersRequest(), metadata=pending)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "MFA" in (refused.value.details() or "")


@pytest.mark.asyncio
async def test_admin_methods_refuse_users(
    stub: pb_grpc.AuthServiceAsyncStub, idp: TestIdentityProvider
) -> None:
    alice = await logged_in(stub, idp, "alice-sub")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ResetMfa(pb.ResetMfaRequest(user="alice@example.com"), metadata=bearer(alice))
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    admin = await logged_in(stub, idp, "admin-sub")
    users = await stub.ListUsers(pb.ListUsersRequest(), metadata=bearer(admin))
    assert [(u.email, u.admin) for u in users.users] == [
        ("admin@example.com", True),
        ("alice@example.com", False),
    ]
    reset = await stub.ResetMfa(
        pb.ResetMfaRequest(user="alice@example.com"), metadata=bearer(admin)
    )
    assert reset.user.email == "alice@example.com"
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(alice))
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.asyncio
async def test_bad_requests_get_clear_errors(
    stub: pb_grpc.AuthServiceAsyncStub, idp: TestIdentityProvider
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stub.Login(pb.LoginRequest())
    assert empty.value.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.asyncio
async def test_methods_missing_from_the_access_table_are_refused() -> None:
    # No auth service is needed: the interceptor must refuse before anything else runs.
    absent = cast(AuthService, None)
    server = grpc.aio.server(interceptors=[SessionInterceptor(absent, {})])
    pb_grpc.add_AuthServiceServicer_to_server(AuthServicer(absent), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.AuthServiceStub(channel).GetLoginConfiguration(
                    pb.GetLoginConfigurationRequest()
                )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop(0)
