"""API keys over real gRPC with TLS: the interceptor takes a key as the bearer token for user and
administrator methods, never for the login methods, and refuses revoked, expired or forged keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TypeAlias

import grpc
import grpc.aio
import pyotp
import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration

from auth import MIGRATIONS, Access, AuthConfig, AuthService, AuthStore, SessionInterceptor
from auth._servicer import ACCESS, AuthServicer
from bastion.auth.v1 import auth_service_pb2 as pb
from bastion.auth.v1 import auth_service_pb2_grpc as pb_grpc
from mrzap import keys
from mrzap.jwks import HttpJwksSource
from mrzap.login_proof import sign_login_proof
from mrzap.pktoken import PkTokenVerifier
from mrzap.storage import Database, sqlite_url
from mrzap.testing import TestIdentityProvider
from mrzap.tls import ensure_server_tls

_SERVICE = "/bastion.auth.v1.AuthService/"
Stub: TypeAlias = "pb_grpc.AuthServiceAsyncStub"  # only the type stubs define it


async def serve(
    idp: TestIdentityProvider, root: Path, access: Mapping[str, Access]
) -> AsyncIterator[Stub]:
    """The auth role with `access` as its method classification, over TLS on loopback."""
    db = Database(sqlite_url(root / "mrzap.db"))
    await asyncio.to_thread(db.migrate, [MIGRATIONS])
    config = AuthConfig(idp=idp.config(client_id="zli"), admin_emails=frozenset({"admin@x.org"}))
    auth = AuthService(config, AuthStore(db), PkTokenVerifier(config.idp, HttpJwksSource()))
    server = grpc.aio.server(interceptors=[SessionInterceptor(auth, access)])
    pb_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth), server)
    tls = ensure_server_tls(root / "tls", ["127.0.0.1"])
    credentials = grpc.ssl_server_credentials(
        [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        channel_credentials = grpc.ssl_channel_credentials(tls.ca_cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials) as channel:
            yield pb_grpc.AuthServiceStub(channel)
    finally:
        await server.stop(0)
        await db.close()


@pytest_asyncio.fixture
async def stub(idp: TestIdentityProvider, tmp_path: Path) -> AsyncIterator[Stub]:
    async for started in serve(idp, tmp_path, ACCESS):
        yield started


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def session(stub: Stub, idp: TestIdentityProvider, email: str) -> str:
    """The token of a session that passed MFA."""
    key = keys.generate_signing_key()
    token = idp.pk_token(keys.public_key_bytes(key), sub=email, email=email)
    stamp = round(time.time() * 1000)
    login = await stub.Login(
        pb.LoginRequest(
            pk_token=token, timestamp_ms=stamp, proof=sign_login_proof(key, "login", token, stamp)
        )
    )
    auth = bearer(login.session_token)
    enrolment = await stub.EnrollMfa(pb.EnrollMfaRequest(), metadata=auth)
    await stub.VerifyMfa(
        pb.VerifyMfaRequest(code=pyotp.TOTP(enrolment.secret).now()), metadata=auth
    )
    return login.session_token


async def create_key(
    stub: Stub, admin_token: str, name: str, *, admin: bool, ttl_s: int = 0
) -> pb.CreateApiKeyResponse:
    request = pb.CreateApiKeyRequest(name=name, admin=admin, ttl=Duration(seconds=ttl_s))
    return await stub.CreateApiKey(request, metadata=bearer(admin_token))


async def refused(call: object, code: grpc.StatusCode) -> str:
    """Await a call that must fail with `code`; returns its message."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    assert error.value.code() is code, error.value.details()
    return error.value.details() or ""


@pytest.mark.asyncio
async def test_an_admin_key_works_on_admin_methods_without_login_or_mfa(
    stub: Stub, idp: TestIdentityProvider
) -> None:
    admin = await session(stub, idp, "admin@x.org")
    created = await create_key(stub, admin, "ci", admin=True, ttl_s=3600)
    assert created.secret.startswith(created.api_key.id + "_")
    assert created.api_key.admin
    assert created.api_key.expire_time.seconds > time.time() + 3590
    key = bearer(created.secret)
    users = await stub.ListUsers(pb.ListUsersRequest(), metadata=key)
    assert [u.email for u in users.users] == ["admin@x.org"]
    listed = await stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=key)
    assert [k.id for k in listed.api_keys] == [created.api_key.id]
    assert listed.api_keys[0].HasField("last_use_time")
    assert created.secret not in str(listed)
    reset = await stub.ResetMfa(pb.ResetMfaRequest(user="admin@x.org"), metadata=key)
    assert reset.user.email == "admin@x.org"


@pytest.mark.asyncio
async def test_a_user_key_is_refused_administrator_methods(
    stub: Stub, idp: TestIdentityProvider
) -> None:
    admin = await session(stub, idp, "admin@x.org")
    created = await create_key(stub, admin, "reader", admin=False)
    message = await refused(
        stub.ListUsers(pb.ListUsersRequest(), metadata=bearer(created.secret)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "only administrators" in message


@pytest.mark.asyncio
async def test_a_user_key_reaches_user_methods(idp: TestIdentityProvider, tmp_path: Path) -> None:
    # The auth role has no USER method of its own: classify ListApiKeys as one to see the rule.
    access = {**ACCESS, _SERVICE + "ListApiKeys": Access.USER}
    async for stub in serve(idp, tmp_path, access):
        admin = await session(stub, idp, "admin@x.org")
        created = await create_key(stub, admin, "reader", admin=False)
        listed = await stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=bearer(created.secret))
        assert [k.name for k in listed.api_keys] == ["reader"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        ("WhoAmI", pb.WhoAmIRequest()),
        ("EnrollMfa", pb.EnrollMfaRequest()),
        ("VerifyMfa", pb.VerifyMfaRequest(code="123456")),
        ("Logout", pb.LogoutRequest()),
        ("RefreshSession", pb.RefreshSessionRequest()),
    ],
)
async def test_keys_cannot_use_the_login_methods(
    stub: Stub, idp: TestIdentityProvider, method: str, request_message: object
) -> None:
    admin = await session(stub, idp, "admin@x.org")
    created = await create_key(stub, admin, "ops", admin=True)
    message = await refused(
        getattr(stub, method)(request_message, metadata=bearer(created.secret)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "needs a user's login session" in message


@pytest.mark.asyncio
async def test_an_admin_key_cannot_create_keys(stub: Stub, idp: TestIdentityProvider) -> None:
    admin = await session(stub, idp, "admin@x.org")
    created = await create_key(stub, admin, "ops", admin=True)
    message = await refused(
        create_key(stub, created.secret, "backdoor", admin=True),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "API keys cannot create API keys" in message


@pytest.mark.asyncio
async def test_revoked_expired_and_forged_keys_are_refused(
    stub: Stub, idp: TestIdentityProvider
) -> None:
    admin = await session(stub, idp, "admin@x.org")
    revoked = await create_key(stub, admin, "leaked", admin=True)
    await stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(api_key_id=revoked.api_key.id), metadata=bearer(admin)
    )
    message = await refused(
        stub.ListUsers(pb.ListUsersRequest(), metadata=bearer(revoked.secret)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert f"{revoked.api_key.id} was revoked" in message

    short = await create_key(stub, admin, "short", admin=True, ttl_s=1)
    await asyncio.sleep(1.1)
    message = await refused(
        stub.ListUsers(pb.ListUsersRequest(), metadata=bearer(short.secret)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert "expired" in message

    live = await create_key(stub, admin, "live", admin=True)
    forged = live.secret[:-4] + ("AAAA" if not live.secret.endswith("AAAA") else "BBBB")
    message = await refused(
        stub.ListUsers(pb.ListUsersRequest(), metadata=bearer(forged)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert message == "the API key is not valid"


@pytest.mark.asyncio
async def test_bad_key_requests_get_clear_errors(stub: Stub, idp: TestIdentityProvider) -> None:
    admin = await session(stub, idp, "admin@x.org")
    message = await refused(
        create_key(stub, admin, "", admin=False), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "needs a name" in message
    await refused(
        create_key(stub, admin, "x", admin=False, ttl_s=-5), grpc.StatusCode.INVALID_ARGUMENT
    )
    await refused(
        stub.RevokeApiKey(
            pb.RevokeApiKeyRequest(api_key_id="mzk_" + "0" * 16), metadata=bearer(admin)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await refused(
        stub.ListApiKeys(pb.ListApiKeysRequest(page_size=-1), metadata=bearer(admin)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
