"""The one authorization interceptor of every service role: classify, authenticate, decide, audit.

For each RPC (unary or streaming; a stream is checked once, when it opens):
1. the method's access class is looked up (PUBLIC, LOGIN, REFRESH, USER, ADMIN, AGENT); a method
   nobody classified is refused;
2. the caller is authenticated as `auth.SessionInterceptor` does (session or API key);
3. the policy decider decides the call as an `ApiCall` for the caller's `Principal` (groups,
   administrator, API key, MFA time) — the shipped Rego allows calls by access class, and custom
   Rego `deny` rules may refuse any call; an engine outage is a denial (fail closed);
4. one audit event records the call, let through or refused, with the decision id and reasons.
A refusal is PERMISSION_DENIED with the denial's reasons in its message. An administrator check
stays as defence in depth after the decision, so no policy can open ADMIN methods to others; its
refusal says "only administrators may do this" (the audit event keeps the policies' reasons).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
import grpc.aio

from audit import AuditLog
from auth import ONLY_ADMINISTRATORS, Access, Caller, SessionInterceptor, User
from mrzap.errors import MrzapError, PermissionDenied, to_status
from mrzap.rpc import GuardInterceptor

from ._audit_events import api_call_event
from ._model import ApiAccess, ApiCall, Decision, Effect, Principal, Reason, TargetAccess

__all__ = [
    "AuthorizationInterceptor",
    "Decider",
    "denial_message",
    "principal_of",
    "user_principal",
]

_log = logging.getLogger(__name__)


class Decider(Protocol):
    """What the interceptor needs of `PolicyDecider`."""

    async def decide(
        self, principal: Principal, action: TargetAccess | ApiCall, *, explain: bool = False
    ) -> Decision:
        """Decide `action` for `principal`; a failure of the engine is a denial."""
        ...


def principal_of(caller: Caller) -> Principal:
    """The decision input's form of an authenticated caller."""
    if caller.api_key is not None:
        return Principal(admin=caller.is_admin, api_key_id=caller.api_key.id)
    assert caller.session is not None
    return user_principal(
        caller.session.user, caller.is_admin, caller.session.session.mfa_verified_at
    )


def user_principal(user: User, admin: bool, mfa_verified_at: float | None) -> Principal:
    """The decision input's form of a user the auth role knows."""
    return Principal(
        user_id=user.id,
        issuer=user.issuer,
        subject=user.subject,
        email=user.email,
        groups=user.groups,
        admin=admin,
        mfa_verified_at=mfa_verified_at,
    )


def denial_message(reasons: Sequence[Reason]) -> str:
    """The status message of a refused request: why, in the policies' own words."""
    denials = [reason.message for reason in reasons if reason.effect is Effect.DENY]
    return "; ".join(denials) if denials else "no policy allows this call"


def _reason(message: str) -> Reason:
    return Reason(policy_id="", policy_name="", effect=Effect.DENY, message=message)


class AuthorizationInterceptor(GuardInterceptor):
    """Authenticates, decides and audits every call before the servicer runs."""

    def __init__(self, sessions: SessionInterceptor, decider: Decider, audit: AuditLog) -> None:
        self._sessions = sessions
        self._decider = decider
        self._audit = audit

    async def guard(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Refuse the call unless it is authenticated and allowed; audit it either way."""
        address = context.peer() or ""
        try:
            access = self._sessions.classify(method)
            caller = await self._sessions.authenticate(method, context, check_admin=False)
        except MrzapError as error:
            # Refused before any decision: no such method, no or bad credential.
            await self._record(method, None, address, error, (_reason(error.message),))
            raise
        principal = Principal() if caller is None else principal_of(caller)
        decision = await self._decide(principal, ApiCall(method, ApiAccess(access.value)))
        reasons = decision.reasons
        refusal: PermissionDenied | None = None
        if access is Access.ADMIN and not principal.admin:
            # Defence in depth, and one plain message for every ADMIN refusal; the audit event
            # keeps the policies' reasons.
            if decision.allowed:
                reasons = (*reasons, _reason(ONLY_ADMINISTRATORS))
            refusal = PermissionDenied(ONLY_ADMINISTRATORS)
        elif not decision.allowed:
            refusal = PermissionDenied(denial_message(reasons))
        await self._record(method, principal, address, refusal, reasons, decision.decision_id)
        if refusal is not None:
            raise refusal

    async def _decide(self, principal: Principal, call: ApiCall) -> Decision:
        try:
            return await self._decider.decide(principal, call)
        except Exception as error:  # the decider should not raise; if it does, fail closed
            _log.exception("policy decision for %s failed; denying", call.method)
            message = (
                f"the policy engine is unavailable ({type(error).__name__}): the call is denied"
            )
            return Decision(
                decision_id="",
                allowed=False,
                reasons=(_reason(message),),
                policy_ids=(),
                max_session_duration=0,
                record_input=False,
                record_output=False,
                decided_at=time.time(),
            )

    async def _record(
        self,
        method: str,
        principal: Principal | None,
        address: str,
        refusal: MrzapError | None,
        reasons: Sequence[Reason],
        decision_id: str = "",
    ) -> None:
        status = grpc.StatusCode.OK if refusal is None else to_status(refusal)[0]
        await self._audit.record(
            api_call_event(
                method,
                principal,
                address,
                allowed=refusal is None,
                status_code=status.value[0],
                reasons=reasons,
                decision_id=decision_id,
            )
        )
