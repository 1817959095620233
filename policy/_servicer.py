"""The gRPC face of the policy role: converts messages and calls the store, decider and issuers.

Policies are read and changed by administrators; each change is validated on the engine first
(`CheckPolicy` runs the same check without storing), audited in the change's transaction, and
followed by a reload of this process's decider. `EvaluateAccess`, `IssueGrant` and
`IssueRevocation` are PUBLIC for the session interceptor because they carry their own credential:
the service credential of another role (`ServiceCredential`), checked here before anything else.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import grpc.aio
from sqlalchemy.ext.asyncio import AsyncSession

from audit import AuditLog
from auth import LOCKED_MESSAGE, Access, AuthConfig, AuthStore, current_caller
from bastion.policy.v1 import policy_service_pb2 as pb
from bastion.policy.v1 import policy_service_pb2_grpc as pb_grpc
from mrzap.clock import Clock, SystemClock
from mrzap.errors import InvalidArgument, NotFound, PermissionDenied
from mrzap.paging import decode_page_token, encode_page_token, page_limit
from mrzap.timestamps import from_timestamp, to_timestamp

from ._access_request_store import AccessRequestState
from ._access_requests import AccessRequests
from ._audit_events import decision_event, policy_change_event
from ._authorize import Decider, principal_of, user_principal
from ._compile import custom_package
from ._convert import (
    access_request_message,
    decision_message,
    policy_message,
    principal_from_message,
    rego_test_result_message,
    rules_from_message,
    seconds,
    target_access_from_message,
)
from ._grant_keys import GrantKeyring
from ._grants import LocalGrantIssuer, TargetLookup
from ._model import (
    ApiAccess,
    ApiCall,
    Decision,
    Effect,
    Policy,
    PolicyRules,
    Principal,
    Reason,
    RegoRules,
    RegoTestResult,
    TargetAccess,
)
from ._service_credential import ServiceCredential

__all__ = ["ACCESS", "PolicyServicer", "UserLookup"]

_SERVICE = "/bastion.policy.v1.PolicyService/"

#: Who may call each method of PolicyService.
ACCESS: dict[str, Access] = {
    _SERVICE + "CreatePolicy": Access.ADMIN,
    _SERVICE + "GetPolicy": Access.ADMIN,
    _SERVICE + "ListPolicies": Access.ADMIN,
    _SERVICE + "UpdatePolicy": Access.ADMIN,
    _SERVICE + "DeletePolicy": Access.ADMIN,
    _SERVICE + "CheckPolicy": Access.ADMIN,
    # Service roles only: checked against the service credential by the servicer.
    _SERVICE + "EvaluateAccess": Access.PUBLIC,
    _SERVICE + "IssueGrant": Access.PUBLIC,
    _SERVICE + "IssueRevocation": Access.PUBLIC,
    # Users explain their own requests; administrators anyone's (checked by the servicer).
    _SERVICE + "ExplainAccess": Access.USER,
    _SERVICE + "ListGrantKeys": Access.USER,
    _SERVICE + "RequestAccess": Access.USER,
    _SERVICE + "ApproveAccess": Access.USER,
    _SERVICE + "DenyAccess": Access.USER,
    _SERVICE + "ListAccessRequests": Access.USER,
}

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_Context = grpc.aio.ServicerContext[Any, Any]


class PolicyStoreLike(Protocol):
    """What the servicer needs of `PolicyStore`."""

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A transaction that changes and their audit events share."""
        ...

    async def create(
        self,
        name: str,
        description: str,
        rules: PolicyRules,
        now: float,
        s: AsyncSession | None = None,
    ) -> Policy:
        """Store a new policy (version 1)."""
        ...

    async def get(self, policy_id: str, version: int = 0) -> Policy:
        """A policy's current version, or an earlier one."""
        ...

    async def list(self, after: tuple[str, str] | None, limit: int) -> list[Policy]:
        """Current policies ordered by (name, id), after the cursor."""
        ...

    async def all_current(self) -> builtins.list[Policy]:
        """The current version of every policy."""
        ...

    async def update(
        self,
        policy_id: str,
        name: str,
        description: str,
        rules: PolicyRules,
        now: float,
        s: AsyncSession | None = None,
    ) -> Policy:
        """Store a new version of a policy."""
        ...

    async def delete(self, policy_id: str, now: float, s: AsyncSession | None = None) -> Policy:
        """Remove a policy; returns its last version."""
        ...


class PolicyDeciderLike(Decider, Protocol):
    """What the servicer needs of `PolicyDecider` beyond deciding."""

    async def check(self, rules: PolicyRules, *, policy_id: str = "") -> list[RegoTestResult]:
        """Validate rules on the engine (as policy `policy_id` when updating it); the tests'
        results for custom Rego."""
        ...

    async def reload(self) -> None:
        """Pick up a change made in this process."""
        ...


class UserLookup:
    """The users the auth role knows, as principals for `ExplainAccess`."""

    def __init__(self, store: AuthStore, config: AuthConfig) -> None:
        self._store = store
        self._config = config

    async def principal(self, name: str, mfa_verified_at: float) -> tuple[Principal, bool]:
        """The principal of the user with this id or email, and whether the user is locked;
        NotFound if there is none."""
        user = await self._store.find_user(name)
        if user is None:
            raise NotFound(f"no user {name!r} has logged in")
        admin = self._config.is_admin(user.email, user.groups)
        return user_principal(user, admin, mfa_verified_at), user.locked


def _locked(decision: Decision) -> Decision:
    """What a locked user gets, whatever the policies say: nothing (the auth role refuses every
    login and call of theirs), with the policies' own reasons after the lock."""
    lock = Reason("", "", Effect.DENY, f"{LOCKED_MESSAGE}: unlock them first")
    return dataclasses.replace(
        decision, allowed=False, reasons=(lock, *decision.reasons), policy_ids=()
    )


def _page_size(page_size: int) -> int:
    return page_limit(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class PolicyServicer(pb_grpc.PolicyServiceServicer):
    """PolicyService over gRPC."""

    def __init__(
        self,
        *,
        store: PolicyStoreLike,
        decider: PolicyDeciderLike,
        access_requests: AccessRequests,
        grants: LocalGrantIssuer,
        grant_keys: GrantKeyring,
        targets: TargetLookup,
        users: UserLookup,
        audit: AuditLog,
        credential: ServiceCredential,
        access: Mapping[str, Access],
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._decider = decider
        self._requests = access_requests
        self._grants = grants
        self._grant_keys = grant_keys
        self._targets = targets
        self._users = users
        self._audit = audit
        self._credential = credential
        self._access = dict(access)
        self._clock = clock or SystemClock()

    # Policies (administrators).

    async def CreatePolicy(
        self, request: pb.CreatePolicyRequest, context: _Context
    ) -> pb.CreatePolicyResponse:
        """Validate and store a new policy."""
        rules = rules_from_message(request.policy)
        await self._decider.check(rules)
        async with self._store.transaction() as s:
            policy = await self._store.create(
                request.policy.name, request.policy.description, rules, self._clock.now(), s
            )
            await self._record_change(s, "CreatePolicy", context, "created", policy)
        await self._decider.reload()
        return pb.CreatePolicyResponse(policy=policy_message(policy))

    async def GetPolicy(
        self, request: pb.GetPolicyRequest, context: _Context
    ) -> pb.GetPolicyResponse:
        """A policy's current version, or an earlier one."""
        if request.version < 0:
            raise InvalidArgument("version must not be negative")
        policy = await self._store.get(request.policy_id, request.version)
        return pb.GetPolicyResponse(policy=policy_message(policy))

    async def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: _Context
    ) -> pb.ListPoliciesResponse:
        """A page of the current policies, ordered by name."""
        limit = _page_size(request.page_size)
        policies = await self._store.list(decode_page_token(request.page_token), limit + 1)
        page = policies[:limit]
        next_token = ""
        if len(policies) > limit:
            next_token = encode_page_token((page[-1].name, page[-1].id))
        return pb.ListPoliciesResponse(
            policies=[policy_message(p) for p in page], next_page_token=next_token
        )

    async def UpdatePolicy(
        self, request: pb.UpdatePolicyRequest, context: _Context
    ) -> pb.UpdatePolicyResponse:
        """Validate and store a new version of a policy (its kind cannot change)."""
        if not request.policy.id:
            raise InvalidArgument("name the policy to update (id)")
        rules = rules_from_message(request.policy)
        await self._decider.check(rules, policy_id=request.policy.id)
        async with self._store.transaction() as s:
            policy = await self._store.update(
                request.policy.id,
                request.policy.name,
                request.policy.description,
                rules,
                self._clock.now(),
                s,
            )
            await self._record_change(s, "UpdatePolicy", context, "updated", policy)
        await self._decider.reload()
        return pb.UpdatePolicyResponse(policy=policy_message(policy))

    async def DeletePolicy(
        self, request: pb.DeletePolicyRequest, context: _Context
    ) -> pb.DeletePolicyResponse:
        """Remove a policy; its versions stay readable by id and version."""
        async with self._store.transaction() as s:
            policy = await self._store.delete(request.policy_id, self._clock.now(), s)
            await self._record_change(s, "DeletePolicy", context, "deleted", policy)
        await self._decider.reload()
        return pb.DeletePolicyResponse()

    async def CheckPolicy(
        self, request: pb.CheckPolicyRequest, context: _Context
    ) -> pb.CheckPolicyResponse:
        """Validate a policy without storing it; run a custom Rego module's tests."""
        rules = rules_from_message(request.policy)
        results = await self._decider.check(
            rules, policy_id=request.policy.id or await self._package_owner(rules)
        )
        return pb.CheckPolicyResponse(test_results=[rego_test_result_message(r) for r in results])

    async def _package_owner(self, rules: PolicyRules) -> str:
        """The stored custom policy whose package `rules` use, if any: checking a new version
        of a stored module (`zli policy test` on its file) is not a package conflict."""
        if not isinstance(rules, RegoRules):
            return ""
        package = custom_package(rules.module)
        for policy in await self._store.all_current():
            if isinstance(policy.rules, RegoRules) and _package_or_none(policy.rules) == package:
                return policy.id
        return ""

    async def _record_change(
        self, s: AsyncSession, method: str, context: _Context, what: str, policy: Policy
    ) -> None:
        # In the change's transaction: the log never shows a change that was rolled back. The
        # store bumps the policy revision in it too, so other processes' deciders reload.
        await self._audit.record(
            policy_change_event(
                _SERVICE + method,
                principal_of(current_caller()),
                context.peer() or "",
                what,
                policy,
            ),
            session=s,
        )

    # Decisions.

    async def EvaluateAccess(
        self, request: pb.EvaluateAccessRequest, context: _Context
    ) -> pb.EvaluateAccessResponse:
        """Decide and audit a request another service role vouches for."""
        self._credential.check(context)
        principal = principal_from_message(request.input.principal)
        action = await self._action(request.input)
        decision = await self._decider.decide(principal, action)
        await self._audit.record(decision_event(principal, action, decision, context.peer() or ""))
        return pb.EvaluateAccessResponse(decision=decision_message(decision))

    async def ExplainAccess(
        self, request: pb.ExplainAccessRequest, context: _Context
    ) -> pb.ExplainAccessResponse:
        """Why a request would be allowed or denied now; users their own, admins anyone's."""
        caller = principal_of(current_caller())
        named = request.input.principal
        principal, locked = caller, False
        if named.user_id or named.subject.email:
            name = named.user_id or named.subject.email.lower()
            if not caller.user_id or name not in (caller.user_id, caller.email):
                if not caller.admin:
                    raise PermissionDenied("only administrators may explain another user's access")
                # Explain what the user's next connection would get: as if MFA were just done.
                principal, locked = await self._users.principal(name, self._clock.now())
        elif named.api_key_id or named.groups:
            raise InvalidArgument("name the user to explain by user_id or subject email")
        action = await self._action(request.input)
        decision = await self._decider.decide(principal, action, explain=True)
        if locked:
            decision = _locked(decision)
        return pb.ExplainAccessResponse(decision=decision_message(decision))

    async def _action(self, decision_input: pb.DecisionInput) -> TargetAccess | ApiCall:
        kind = decision_input.WhichOneof("action")
        if kind == "target_access":
            wanted = decision_input.target_access
            if not wanted.target_id:
                raise InvalidArgument("name the target (target_id)")
            target = await self._targets.get_target(wanted.target_id)
            return target_access_from_message(wanted, target.environment_id)
        if kind == "api_call":
            method = decision_input.api_call.method
            access = self._access.get(method)
            if access is None:
                raise InvalidArgument(f"{method!r} is not a method of the service")
            return ApiCall(method, ApiAccess(access.value))
        raise InvalidArgument("say what to decide: target_access or api_call")

    # Grants (the broker role only).

    async def IssueGrant(
        self, request: pb.IssueGrantRequest, context: _Context
    ) -> pb.IssueGrantResponse:
        """Decide a connection request and sign a grant only if it is allowed."""
        self._credential.check(context)
        issued = await self._grants.issue_grant(
            principal_from_message(request.principal),
            request.access,
            request.upk,
            context.peer() or "",
        )
        response = pb.IssueGrantResponse(decision=decision_message(issued.decision))
        if issued.grant is not None:
            response.grant.CopyFrom(issued.grant)
        return response

    async def IssueRevocation(
        self, request: pb.IssueRevocationRequest, context: _Context
    ) -> pb.IssueRevocationResponse:
        """Sign a revocation for the broker to push to agents."""
        self._credential.check(context)
        before = from_timestamp(request.before) if request.HasField("before") else None
        signed = await self._grants.issue_revocation(
            list(request.grant_ids), list(request.subjects), before
        )
        return pb.IssueRevocationResponse(revocation=signed)

    async def ListGrantKeys(
        self, request: pb.ListGrantKeysRequest, context: _Context
    ) -> pb.ListGrantKeysResponse:
        """A page of the grant keys' public halves, newest first."""
        limit = _page_size(request.page_size)
        keys = sorted(self._grant_keys.public_keys, key=lambda k: k.key_id, reverse=True)
        cursor = decode_page_token(request.page_token)
        if cursor is not None:
            keys = [k for k in keys if k.key_id < cursor[0]]
        page = keys[:limit]
        next_token = encode_page_token((page[-1].key_id, "")) if len(keys) > limit else ""
        return pb.ListGrantKeysResponse(
            grant_keys=[
                pb.GrantKey(
                    key_id=k.key_id,
                    public_key=k.public_key,
                    create_time=to_timestamp(k.created_at),
                )
                for k in page
            ],
            next_page_token=next_token,
        )

    # Just-in-time access.

    async def RequestAccess(
        self, request: pb.RequestAccessRequest, context: _Context
    ) -> pb.RequestAccessResponse:
        """Ask for the access of a just-in-time policy."""
        created = await self._requests.request(
            principal_of(current_caller()),
            request.policy_id,
            request.reason,
            seconds(request.duration, "duration"),
            context.peer() or "",
        )
        return pb.RequestAccessResponse(access_request=access_request_message(created))

    async def ApproveAccess(
        self, request: pb.ApproveAccessRequest, context: _Context
    ) -> pb.ApproveAccessResponse:
        """Approve a pending request (its policy's approvers only, never the requester)."""
        decided = await self._requests.approve(
            principal_of(current_caller()),
            request.access_request_id,
            request.comment,
            context.peer() or "",
        )
        return pb.ApproveAccessResponse(access_request=access_request_message(decided))

    async def DenyAccess(
        self, request: pb.DenyAccessRequest, context: _Context
    ) -> pb.DenyAccessResponse:
        """Deny a pending request (its policy's approvers only, never the requester)."""
        decided = await self._requests.deny(
            principal_of(current_caller()),
            request.access_request_id,
            request.comment,
            context.peer() or "",
        )
        return pb.DenyAccessResponse(access_request=access_request_message(decided))

    async def ListAccessRequests(
        self, request: pb.ListAccessRequestsRequest, context: _Context
    ) -> pb.ListAccessRequestsResponse:
        """The caller's own requests and those they may decide, newest first."""
        requests, next_token = await self._requests.list(
            principal_of(current_caller()),
            _states(request.states),
            request.page_size,
            request.page_token,
        )
        return pb.ListAccessRequestsResponse(
            access_requests=[access_request_message(r) for r in requests],
            next_page_token=next_token,
        )


def _package_or_none(rules: RegoRules) -> str | None:
    try:
        return custom_package(rules.module)
    except InvalidArgument:
        return None


def _states(numbers: Sequence[int]) -> set[AccessRequestState]:
    states = set()
    for number in numbers:
        try:
            states.add(AccessRequestState(number))
        except ValueError:
            raise InvalidArgument(f"{number} is not an access request state") from None
    return states
