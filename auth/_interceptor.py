"""Authentication of every RPC: each method is classified, and callers are checked before it runs.

A method missing from the classification is refused (fail closed). USER and ADMIN methods accept
a user's session (after MFA) or a service account's API key; the login methods (MFA, refresh,
logout, whoami) need a session. Servicers read who called with `current_caller()`, or
`current_session()` where only a person's session makes sense.

The service runs it inside `policy.AuthorizationInterceptor`, which uses `classify` and
`authenticate` and then has the policy engine decide, and the audit log record, every call.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Mapping
from typing import Any

import grpc.aio

from mrzap.errors import Internal, PermissionDenied, Unauthenticated
from mrzap.rpc import GuardInterceptor, bearer_token

from ._api_keys import looks_like_api_key
from ._caller import Caller
from ._domain import AuthService, SessionInfo

__all__ = [
    "ONLY_ADMINISTRATORS",
    "Access",
    "SessionInterceptor",
    "current_caller",
    "current_session",
]


class Access(enum.Enum):
    """Who may call a method."""

    PUBLIC = "public"
    """Anyone: login configuration and login itself."""

    LOGIN = "login"
    """A session that may still need MFA: MFA enrolment and verification, logout, whoami."""

    REFRESH = "refresh"
    """A session that may have expired (not been revoked): refreshing it."""

    USER = "user"
    """A session that has passed MFA, or an API key."""

    ADMIN = "admin"
    """A session that has passed MFA, of an administrator; or an administrator's API key."""

    AGENT = "agent"
    """Agents, which authenticate with their own key inside the call."""


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "mrzap_caller", default=None
)

#: The refusal of an ADMIN method to anyone else.
ONLY_ADMINISTRATORS = "only administrators may do this"

_NEEDS_SESSION = "this call needs a user's login session (`zli login`); API keys cannot make it"


def current_caller() -> Caller:
    """Who made the RPC being served: a user's session or an API key."""
    caller = _caller.get()
    if caller is None:
        raise Internal("no authenticated caller for this call")
    return caller


def current_session() -> SessionInfo:
    """The session of the RPC being served; PermissionDenied if an API key made it."""
    caller = current_caller()
    if caller.session is None:
        raise PermissionDenied(_NEEDS_SESSION)
    return caller.session


class SessionInterceptor(GuardInterceptor):
    """Checks the caller's session or API key against the method's access class."""

    def __init__(self, auth: AuthService, access: Mapping[str, Access]) -> None:
        self._auth = auth
        self._access = dict(access)

    async def guard(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Refuse the call unless the caller may make it; remember the caller for the servicer."""
        await self.authenticate(method, context)

    def classify(self, method: str) -> Access:
        """The method's access class; PermissionDenied for a method nobody classified."""
        access = self._access.get(method)
        if access is None:
            raise PermissionDenied(f"{method} is not open to any caller")
        return access

    async def authenticate(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        check_admin: bool = True,
    ) -> Caller | None:
        """Check the caller against the method's access class and remember them for the servicer.

        Returns the caller, or None for PUBLIC and AGENT methods, which carry their own
        credential (or none) inside the call. `check_admin=False` leaves the administrator check
        of ADMIN methods to the caller (the policy decision, which records why it refused).
        """
        access = self.classify(method)
        if access in (Access.PUBLIC, Access.AGENT):
            return None
        token = bearer_token(context)
        if not token:
            raise Unauthenticated("not logged in: run `zli login`")
        if looks_like_api_key(token):
            if access not in (Access.USER, Access.ADMIN):
                raise PermissionDenied(_NEEDS_SESSION)
            caller = await self._auth.api_keys.authenticate(token)
        else:
            info = await self._auth.authenticate(
                token,
                allow_mfa_pending=access in (Access.LOGIN, Access.REFRESH),
                allow_expired=access is Access.REFRESH,
            )
            caller = Caller.of_session(info)
        if check_admin and access is Access.ADMIN and not caller.is_admin:
            raise PermissionDenied(ONLY_ADMINISTRATORS)
        _caller.set(caller)
        return caller
