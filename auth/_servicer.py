"""The gRPC face of the auth role: converts messages and calls the domain service."""

from __future__ import annotations

from typing import Any

import grpc.aio

from bastion.auth.v1 import auth_service_pb2 as pb
from bastion.auth.v1 import auth_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.errors import InvalidArgument
from mrzap.timestamps import to_timestamp

from ._api_key_store import ApiKey
from ._domain import AuthService, MfaStatus, SessionInfo
from ._interceptor import Access, current_caller, current_session
from ._store import User

__all__ = ["ACCESS", "AuthServicer"]

_SERVICE = "/bastion.auth.v1.AuthService/"

#: Who may call each method of AuthService.
ACCESS: dict[str, Access] = {
    _SERVICE + "GetLoginConfiguration": Access.PUBLIC,
    _SERVICE + "Login": Access.PUBLIC,
    _SERVICE + "EnrollMfa": Access.LOGIN,
    _SERVICE + "VerifyMfa": Access.LOGIN,
    _SERVICE + "RefreshSession": Access.REFRESH,
    _SERVICE + "Logout": Access.LOGIN,
    _SERVICE + "WhoAmI": Access.LOGIN,
    _SERVICE + "ListUsers": Access.ADMIN,
    _SERVICE + "ResetMfa": Access.ADMIN,
    _SERVICE + "CreateApiKey": Access.ADMIN,
    _SERVICE + "ListApiKeys": Access.ADMIN,
    _SERVICE + "RevokeApiKey": Access.ADMIN,
}

_MFA_STATUS = {
    MfaStatus.DONE: pb.MFA_STATUS_DONE,
    MfaStatus.ENROLMENT_REQUIRED: pb.MFA_STATUS_ENROLMENT_REQUIRED,
    MfaStatus.VERIFICATION_REQUIRED: pb.MFA_STATUS_VERIFICATION_REQUIRED,
}

_Context = grpc.aio.ServicerContext[Any, Any]


def user_message(user: User, admin: bool) -> pb.User:
    """The wire form of a user."""
    return pb.User(
        id=user.id,
        email=user.email,
        groups=list(user.groups),
        admin=admin,
        subject=mrzap_pb2.Subject(iss=user.issuer, sub=user.subject, email=user.email),
        create_time=to_timestamp(user.created_at),
        last_login_time=to_timestamp(user.last_login_at),
        locked=user.locked,
    )


def session_message(info: SessionInfo) -> pb.Session:
    """The wire form of a session (never its token)."""
    session = pb.Session(
        id=info.session.id,
        start_time=to_timestamp(info.session.started_at),
        expire_time=to_timestamp(info.session.expires_at),
        mfa_status=_MFA_STATUS[info.mfa],
    )
    if info.session.mfa_verified_at is not None:
        session.mfa_verify_time.CopyFrom(to_timestamp(info.session.mfa_verified_at))
    return session


def api_key_message(key: ApiKey) -> pb.ApiKey:
    """The wire form of an API key (never its secret)."""
    message = pb.ApiKey(
        id=key.id,
        name=key.name,
        admin=key.admin,
        creator_user_id=key.creator_user_id,
        create_time=to_timestamp(key.created_at),
    )
    if key.expires_at is not None:
        message.expire_time.CopyFrom(to_timestamp(key.expires_at))
    if key.last_used_at is not None:
        message.last_use_time.CopyFrom(to_timestamp(key.last_used_at))
    return message


def _require_pk_token(token: mrzap_pb2.PkToken, proof: bytes) -> None:
    if not token.id_token or len(token.upk) != 32 or not proof:
        raise InvalidArgument("a PK token (ID token and 32-byte key) and a proof are required")


class AuthServicer(pb_grpc.AuthServiceServicer):
    """AuthService over gRPC."""

    def __init__(self, auth: AuthService) -> None:
        self._auth = auth

    async def GetLoginConfiguration(
        self, request: pb.GetLoginConfigurationRequest, context: _Context
    ) -> pb.GetLoginConfigurationResponse:
        """The organisation's IdP settings for clients."""
        config = self._auth.config
        return pb.GetLoginConfigurationResponse(
            issuer=config.idp.issuer,
            client_id=config.idp.client_id,
            scopes=list(config.scopes),
            client_secret=config.client_secret,
            mfa_required=config.controls.mfa_required,
        )

    async def Login(self, request: pb.LoginRequest, context: _Context) -> pb.LoginResponse:
        """Start a session from a PK token."""
        _require_pk_token(request.pk_token, request.proof)
        result = await self._auth.login(request.pk_token, request.timestamp_ms, request.proof)
        return pb.LoginResponse(
            session_token=result.token,
            session=session_message(result.info),
            user=user_message(result.info.user, result.info.is_admin),
        )

    async def EnrollMfa(
        self, request: pb.EnrollMfaRequest, context: _Context
    ) -> pb.EnrollMfaResponse:
        """A new TOTP secret for the caller."""
        enrolment = await self._auth.enroll_mfa(current_session())
        return pb.EnrollMfaResponse(secret=enrolment.secret, otpauth_uri=enrolment.uri)

    async def VerifyMfa(
        self, request: pb.VerifyMfaRequest, context: _Context
    ) -> pb.VerifyMfaResponse:
        """Check the caller's TOTP code."""
        info = await self._auth.verify_mfa(current_session(), request.code)
        return pb.VerifyMfaResponse(session=session_message(info))

    async def RefreshSession(
        self, request: pb.RefreshSessionRequest, context: _Context
    ) -> pb.RefreshSessionResponse:
        """Extend the caller's session with a refreshed ID token."""
        _require_pk_token(request.pk_token, request.proof)
        info = await self._auth.refresh(
            current_session(), request.pk_token, request.timestamp_ms, request.proof
        )
        return pb.RefreshSessionResponse(session=session_message(info))

    async def Logout(self, request: pb.LogoutRequest, context: _Context) -> pb.LogoutResponse:
        """End the caller's session."""
        await self._auth.logout(current_session())
        return pb.LogoutResponse()

    async def WhoAmI(self, request: pb.WhoAmIRequest, context: _Context) -> pb.WhoAmIResponse:
        """The caller and their session."""
        info = current_session()
        return pb.WhoAmIResponse(
            user=user_message(info.user, info.is_admin), session=session_message(info)
        )

    async def ResetMfa(self, request: pb.ResetMfaRequest, context: _Context) -> pb.ResetMfaResponse:
        """Forget a user's MFA (administrators only)."""
        if not request.user:
            raise InvalidArgument("name the user by id or email")
        user = await self._auth.reset_mfa(current_caller(), request.user)
        return pb.ResetMfaResponse(
            user=user_message(user, self._auth.config.is_admin(user.email, user.groups))
        )

    async def ListUsers(
        self, request: pb.ListUsersRequest, context: _Context
    ) -> pb.ListUsersResponse:
        """A page of the organisation's users (administrators only)."""
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        users, next_token = await self._auth.list_users(request.page_size, request.page_token)
        return pb.ListUsersResponse(
            users=[user_message(user, admin) for user, admin in users], next_page_token=next_token
        )

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: _Context
    ) -> pb.CreateApiKeyResponse:
        """A new API key; its secret is in this answer only (administrators only)."""
        ttl_s = request.ttl.ToTimedelta().total_seconds() if request.HasField("ttl") else 0.0
        key, secret = await self._auth.api_keys.create(
            current_caller(), request.name, admin=request.admin, ttl_s=ttl_s
        )
        return pb.CreateApiKeyResponse(api_key=api_key_message(key), secret=secret)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: _Context
    ) -> pb.ListApiKeysResponse:
        """A page of the API keys not revoked, without secrets (administrators only)."""
        keys, next_token = await self._auth.api_keys.list(request.page_size, request.page_token)
        return pb.ListApiKeysResponse(
            api_keys=[api_key_message(key) for key in keys], next_page_token=next_token
        )

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: _Context
    ) -> pb.RevokeApiKeyResponse:
        """Make an API key unusable at once (administrators only)."""
        await self._auth.api_keys.revoke(current_caller(), request.api_key_id)
        return pb.RevokeApiKeyResponse()
