"""Just-in-time access: users ask for the access of a policy for a while, approvers decide.

A just-in-time policy names who may ask (`subjects`), the policies whose access an approved
request gives (`policy_ids`), who may decide (`approvers`), whether requests are approved at once
(`auto_approve`) and the longest access one may ask for (`max_duration`). An approved request's
access ends by itself at its expire time: the decider gives it only while it is active, and the
store reads an ended one as EXPIRED. Nobody decides their own request. Every request, decision
and refusal is audited; a change that alters who has access bumps the policy revision in the same
transaction, so the deciders of every process sharing the database reload.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from audit import AuditLog
from mrzap.clock import Clock, SystemClock
from mrzap.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mrzap.paging import decode_time_token, encode_time_token, page_limit

from ._access_request_store import AccessRequest, AccessRequestState, AccessRequestStore
from ._audit_events import change_event
from ._model import ActiveAccess, JustInTimeRules, Policy, Principal, SubjectSelector

__all__ = [
    "DEFAULT_MAX_DURATION_S",
    "PENDING_TIMEOUT_S",
    "AccessRequests",
    "PolicyLookup",
    "selector_matches",
]

#: How long a request may wait for an approver before it expires undecided.
PENDING_TIMEOUT_S = 24 * 3600.0
#: The longest access a request may ask for when its policy sets no maximum.
DEFAULT_MAX_DURATION_S = 8 * 3600.0
MAX_REASON_LENGTH = 1000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_SERVICE = "/bastion.policy.v1.PolicyService/"
_NEEDS_USER = "just-in-time access is for people: log in with `zli login` (API keys cannot ask)"


class PolicyLookup(Protocol):
    """What access requests need of the policy store."""

    async def get(self, policy_id: str, version: int = 0) -> Policy:
        """The policy (NotFound if there is none)."""
        ...

    async def all_current(self) -> list[Policy]:
        """The current version of every policy."""
        ...

    async def bump_revision(self, s: AsyncSession | None = None) -> None:
        """Tell every process's decider that access changed."""
        ...


def selector_matches(selector: SubjectSelector, principal: Principal) -> bool:
    """Whether `principal` is among the callers `selector` names."""
    if principal.api_key_id:
        return principal.api_key_id in selector.api_key_ids
    email = principal.email.lower()
    if email and email in {e.lower() for e in selector.user_emails}:
        return True
    return bool(set(principal.groups) & set(selector.groups))


class AccessRequests:
    """Requests for just-in-time access, their decisions, and the access they give."""

    def __init__(
        self,
        store: AccessRequestStore,
        policies: PolicyLookup,
        audit: AuditLog,
        on_change: Callable[[], Awaitable[None]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._policies = policies
        self._audit = audit
        self._on_change = on_change
        self._clock = clock or SystemClock()

    async def request(
        self, principal: Principal, policy_id: str, reason: str, duration_s: float, address: str
    ) -> AccessRequest:
        """Ask for the access of a just-in-time policy; approved at once if it says so."""
        method = _SERVICE + "RequestAccess"
        if not principal.user_id:
            raise PermissionDenied(_NEEDS_USER)
        policy, rules = await self._jit_policy(policy_id)
        if not selector_matches(rules.subjects, principal):
            await self._refused(
                method,
                principal,
                address,
                policy,
                f"not among those who may ask for access under {policy.name!r}",
            )
            raise PermissionDenied(
                f"you are not among those who may ask for access under {policy.name!r}"
            )
        reason = reason.strip()
        if not reason:
            raise InvalidArgument("say why you need the access (reason)")
        if len(reason) > MAX_REASON_LENGTH:
            raise InvalidArgument(f"the reason is longer than {MAX_REASON_LENGTH} characters")
        longest = rules.max_duration or DEFAULT_MAX_DURATION_S
        if not 0 < duration_s <= longest:
            raise InvalidArgument(
                f"the duration must be more than 0 and at most {_shown_duration(longest)} "
                f"under {policy.name!r}"
            )
        now = self._clock.now()
        approved = rules.auto_approve
        request = AccessRequest(
            id=str(uuid.uuid4()),
            policy_id=policy.id,
            requester_user_id=principal.user_id,
            requester_email=principal.email,
            reason=reason,
            duration_s=duration_s,
            state=AccessRequestState.APPROVED if approved else AccessRequestState.PENDING,
            created_at=now,
            pending_until=now + PENDING_TIMEOUT_S,
            decided_at=now if approved else None,
            decider_user_id="",
            decider_email="",
            decision_comment="approved automatically by the policy" if approved else "",
            expires_at=now + duration_s if approved else None,
        )
        what = "approved automatically" if approved else "pending"
        async with self._store.transaction() as s:
            await self._store.add(s, request)
            await self._audit.record(
                change_event(
                    method,
                    principal,
                    address,
                    f"access request {request.id} under {policy.name!r} for "
                    f"{_shown_duration(duration_s)}: {what}",
                    policy_id=policy.id,
                    policy_name=policy.name,
                ),
                session=s,
            )
            if approved:
                await self._policies.bump_revision(s)
        if approved:
            await self._changed()
        return request

    async def approve(
        self, principal: Principal, request_id: str, comment: str, address: str
    ) -> AccessRequest:
        """Approve a pending request: its access starts now and ends after its duration."""
        return await self._decide(principal, request_id, comment, address, approve=True)

    async def deny(
        self, principal: Principal, request_id: str, comment: str, address: str
    ) -> AccessRequest:
        """Deny a pending request."""
        return await self._decide(principal, request_id, comment, address, approve=False)

    async def list(
        self,
        principal: Principal,
        states: Collection[AccessRequestState],
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[AccessRequest], str]:
        """A page of the caller's own requests and those they may decide, newest first."""
        limit = page_limit(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        decidable = [
            policy.id
            for policy in await self._policies.all_current()
            if isinstance(policy.rules, JustInTimeRules)
            and selector_matches(policy.rules.approvers, principal)
        ]
        requests = await self._store.search(
            self._clock.now(),
            requester_user_id=principal.user_id,
            decidable_policy_ids=decidable,
            states=states,
            after=decode_time_token(page_token),
            limit=limit + 1,
        )
        page = requests[:limit]
        next_token = ""
        if len(requests) > limit:
            next_token = encode_time_token(page[-1].created_at, page[-1].id)
        return page, next_token

    async def active_access(self) -> Sequence[ActiveAccess]:
        """Every approved request whose access has not ended: what the decider adds."""
        return [
            ActiveAccess(
                request_id=request.id,
                user_id=request.requester_user_id,
                email=request.requester_email,
                jit_policy_id=request.policy_id,
                expires_at=request.expires_at or 0.0,
            )
            for request in await self._store.active(self._clock.now())
        ]

    async def _decide(
        self, principal: Principal, request_id: str, comment: str, address: str, *, approve: bool
    ) -> AccessRequest:
        method = _SERVICE + ("ApproveAccess" if approve else "DenyAccess")
        verb = "approve" if approve else "deny"
        now = self._clock.now()
        request = await self._store.get(request_id, now) if request_id else None
        if request is None:
            raise NotFound(f"no access request {request_id!r}")
        try:
            policy, rules = await self._jit_policy(request.policy_id)
        except NotFound:
            raise FailedPrecondition(
                "the just-in-time policy of this request was deleted: it cannot be decided"
            ) from None
        if not selector_matches(rules.approvers, principal):
            await self._refused(
                method,
                principal,
                address,
                policy,
                f"not an approver of {policy.name!r}: may not {verb} request {request.id}",
            )
            raise PermissionDenied(f"only the approvers of {policy.name!r} may {verb} it")
        if principal.user_id and principal.user_id == request.requester_user_id:
            await self._refused(
                method,
                principal,
                address,
                policy,
                f"may not {verb} their own access request {request.id}",
            )
            raise PermissionDenied(f"you cannot {verb} your own access request")
        comment = comment.strip()
        if len(comment) > MAX_REASON_LENGTH:
            raise InvalidArgument(f"the comment is longer than {MAX_REASON_LENGTH} characters")
        state = AccessRequestState.APPROVED if approve else AccessRequestState.DENIED
        expires_at = now + request.duration_s if approve else None
        decider = principal.email or principal.api_key_id
        async with self._store.transaction() as s:
            decided = await self._store.decide(
                s,
                request.id,
                now,
                state=state,
                decider_user_id=principal.user_id,
                decider_email=decider,
                comment=comment,
                expires_at=expires_at,
            )
            if not decided:
                raise FailedPrecondition(
                    f"the request is {request.state.name} and can no longer be decided"
                )
            await self._audit.record(
                change_event(
                    method,
                    principal,
                    address,
                    f"access request {request.id} of {request.requester_email} "
                    f"{state.name.lower()}",
                    policy_id=policy.id,
                    policy_name=policy.name,
                ),
                session=s,
            )
            if approve:
                await self._policies.bump_revision(s)
        if approve:
            await self._changed()
        return dataclasses.replace(
            request,
            state=state,
            decided_at=now,
            decider_user_id=principal.user_id,
            decider_email=decider,
            decision_comment=comment,
            expires_at=expires_at,
        )

    async def _jit_policy(self, policy_id: str) -> tuple[Policy, JustInTimeRules]:
        if not policy_id:
            raise InvalidArgument("name the just-in-time policy (policy_id)")
        policy = await self._policies.get(policy_id)
        if not isinstance(policy.rules, JustInTimeRules):
            raise InvalidArgument(f"policy {policy.name!r} is not a just-in-time policy")
        return policy, policy.rules

    async def _refused(
        self, method: str, principal: Principal, address: str, policy: Policy, message: str
    ) -> None:
        await self._audit.record(
            change_event(
                method,
                principal,
                address,
                message,
                allowed=False,
                policy_id=policy.id,
                policy_name=policy.name,
            )
        )

    async def _changed(self) -> None:
        if self._on_change is not None:
            await self._on_change()


def _shown_duration(value_s: float) -> str:
    if value_s >= 3600 and value_s % 3600 == 0:
        return f"{int(value_s // 3600)}h"
    if value_s >= 60 and value_s % 60 == 0:
        return f"{int(value_s // 60)}m"
    return f"{value_s:g}s"
