"""Which targets a user who is not an administrator may see: those the policies could open.

A target is visible to a caller when some target connect policy could let the caller connect to
it: the policy's subjects match the caller (by email, group or API key), or an approved
just-in-time request gives the caller the policy's access, and the policy covers the target by id
or by environment. The answer is a `TargetScope` (target ids and environment ids) that the store
applies inside its query, so listing stays one indexed query and pages stay full.

This is an upper bound of what the decider would allow, on purpose: it ignores the target user,
verbs beyond "some", MFA and custom Rego `deny` rules, which only narrow access at connect time.
Seeing a target's name grants nothing; every connection is still decided by the policy role and
checked by the agent. Targets only custom Rego `allow` rules open are not listed (ids still work).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from policy import Principal, SubjectSelector, TargetConnectRules

from ._store import TargetScope

__all__ = ["PolicySource", "TargetVisibility", "visible_scope"]


class _Policy(Protocol):
    """What visibility reads of a stored policy (`policy.Policy`)."""

    @property
    def id(self) -> str: ...

    @property
    def rules(self) -> object: ...


class PolicySource(Protocol):
    """Where the policies are read: `policy.PolicyStore`."""

    async def all_current(self) -> Sequence[_Policy]:
        """Every live policy at its current version."""
        ...


class _ActiveAccess(Protocol):
    """An approved, unexpired just-in-time request (`AccessRequests.active_access` items)."""

    @property
    def user_id(self) -> str: ...

    @property
    def jit_policy_id(self) -> str: ...


@runtime_checkable
class _JustInTimeRules(Protocol):
    """The rules of a just-in-time policy: the policies whose access an approval gives."""

    @property
    def policy_ids(self) -> tuple[str, ...]: ...

    @property
    def approvers(self) -> SubjectSelector: ...


def _matches(subjects: SubjectSelector, principal: Principal) -> bool:
    """Whether the selector names the caller; as authz.rego's `subject_matches`."""
    email = principal.email.lower()
    if email and email in {e.lower() for e in subjects.user_emails}:
        return True
    if set(principal.groups) & set(subjects.groups):
        return True
    return bool(principal.api_key_id) and principal.api_key_id in subjects.api_key_ids


def _could_connect(rules: TargetConnectRules) -> bool:
    # A policy without verbs or target users allows nothing (authz.rego needs one of each).
    return bool(rules.verbs) and bool(rules.target_users)


def visible_scope(
    principal: Principal, policies: Iterable[_Policy], active: Iterable[_ActiveAccess] = ()
) -> TargetScope:
    """The targets the caller's matching target connect policies cover."""
    policies = list(policies)
    given: set[str] = set()
    if principal.user_id:
        jit_ids = {a.jit_policy_id for a in active if a.user_id == principal.user_id}
        for policy in policies:
            if policy.id in jit_ids and isinstance(policy.rules, _JustInTimeRules):
                given.update(policy.rules.policy_ids)
    target_ids: set[str] = set()
    environment_ids: set[str] = set()
    for policy in policies:
        rules = policy.rules
        if not isinstance(rules, TargetConnectRules) or not _could_connect(rules):
            continue
        if policy.id in given or _matches(rules.subjects, principal):
            target_ids.update(rules.targets.target_ids)
            environment_ids.update(rules.targets.environment_ids)
    return TargetScope(frozenset(target_ids), frozenset(environment_ids))


class TargetVisibility:
    """Works out a caller's `TargetScope` from the current policies and just-in-time access."""

    def __init__(
        self,
        policies: PolicySource,
        active_access: Callable[[], Awaitable[Sequence[_ActiveAccess]]] | None = None,
    ) -> None:
        self._policies = policies
        self._active_access = active_access

    async def scope(self, principal: Principal) -> TargetScope:
        """What `principal` may see; read fresh each call so a changed policy counts at once."""
        active = await self._active_access() if self._active_access is not None else ()
        return visible_scope(principal, await self._policies.all_current(), active)
