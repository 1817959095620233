"""Helpers for the policy role's RPC tests: sessions through the real auth role, refused calls."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence

import grpc
import grpc.aio
import pyotp
import pytest

from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.auth.v1 import auth_service_pb2_grpc as auth_grpc
from mrzap import keys
from mrzap.login_proof import sign_login_proof
from mrzap.testing import TestIdentityProvider

Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    """The metadata that presents a session token or an API key."""
    return (("authorization", f"Bearer {token}"),)


async def login(
    channel: grpc.aio.Channel,
    idp: TestIdentityProvider,
    email: str,
    groups: Sequence[str] = (),
    *,
    mfa: bool = True,
) -> str:
    """Log `email` in through the auth role (with MFA unless told not to); the session token."""
    auth = auth_grpc.AuthServiceStub(channel)
    key = keys.generate_signing_key()
    token = idp.pk_token(
        keys.public_key_bytes(key),
        sub=f"sub-{email}",
        email=email,
        extra_claims={"groups": list(groups)},
    )
    stamp = round(time.time() * 1000)
    answer = await auth.Login(
        auth_pb.LoginRequest(
            pk_token=token, timestamp_ms=stamp, proof=sign_login_proof(key, "login", token, stamp)
        )
    )
    if mfa:
        metadata = bearer(answer.session_token)
        enrolment = await auth.EnrollMfa(auth_pb.EnrollMfaRequest(), metadata=metadata)
        code = pyotp.TOTP(enrolment.secret).now()
        await auth.VerifyMfa(auth_pb.VerifyMfaRequest(code=code), metadata=metadata)
    return answer.session_token


async def refused(call: Awaitable[object], code: grpc.StatusCode) -> str:
    """Await a call that must fail with `code`; its status message."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() is code, failure.value.details()
    return failure.value.details() or ""
