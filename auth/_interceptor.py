"""Authentication of every RPC: each method is classified, and sessions are checked before it runs.

A method missing from the classification is refused (fail closed). The servicer reads the
authenticated session with `current_session()`.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Mapping
from typing import Any

import grpc.aio

from mrzap.errors import Internal, PermissionDenied, Unauthenticated
from mrzap.rpc import GuardInterceptor, bearer_token

from ._domain import AuthService, SessionInfo

__all__ = ["Access", "SessionInterceptor", "current_session"]


class Access(enum.Enum):
    """Who may call a method."""

    PUBLIC = "public"
    """Anyone: login configuration and login itself."""

    LOGIN = "login"
    """A session that may still need MFA: MFA enrolment and verification, logout, whoami."""

    REFRESH = "refresh"
    """A session that may have expired (not been revoked): refreshing it."""

    USER = "user"
    """A session that has passed MFA."""

    ADMIN = "admin"
    """A session that has passed MFA, of an administrator."""

    AGENT = "agent"
    """Agents, which authenticate with their own key inside the call."""


_session: contextvars.ContextVar[SessionInfo | None] = contextvars.ContextVar(
    "mrzap_session", default=None
)


def current_session() -> SessionInfo:
    """The session of the RPC being served."""
    info = _session.get()
    if info is None:
        raise Internal("no authenticated session for this call")
    return info


class SessionInterceptor(GuardInterceptor):
    """Checks the caller's session against the method's access class."""

    def __init__(self, auth: AuthService, access: Mapping[str, Access]) -> None:
        self._auth = auth
        self._access = dict(access)

    async def guard(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Refuse the call unless the caller may make it; remember the session for the servicer."""
        access = self._access.get(method)
        if access is None:
            raise PermissionDenied(f"{method} is not open to any caller")
        if access in (Access.PUBLIC, Access.AGENT):
            return
        token = bearer_token(context)
        if not token:
            raise Unauthenticated("not logged in: run `zli login`")
        info = await self._auth.authenticate(
            token,
            allow_mfa_pending=access in (Access.LOGIN, Access.REFRESH),
            allow_expired=access is Access.REFRESH,
        )
        if access is Access.ADMIN and not info.is_admin:
            raise PermissionDenied("only administrators may do this")
        _session.set(info)
