"""Applying a policy file (`zli policy create|update|import`): plan, check, then change.

A plan is made from the whole file before anything changes: each document is read (every name
looked up), matched by name to a stored policy, and checked by the service (CheckPolicy). Only a
file whose every document passes is applied, so a mistake anywhere loses nothing. Just-in-time
policies may name policies that the same file creates: those are created first, and the
just-in-time policies get their ids once they exist.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

from bastion.policy.v1 import policy_service_pb2 as policy_pb
from mrzap.errors import AlreadyExists, InvalidArgument, NotFound

from ._client import Client
from ._policy_names import ServiceNames, policies
from ._policy_yaml import PolicyDocument, declared_names, kind_of, parse_policies

__all__ = ["Action", "Change", "Mode", "apply_plan", "plan_file"]


class Mode(enum.Enum):
    """Which changes a command may make."""

    CREATE = "create"
    """Only new policies (`zli policy create`)."""

    UPDATE = "update"
    """Only existing policies (`zli policy update`)."""

    IMPORT = "import"
    """Both, matched by name (`zli policy import`)."""


class Action(enum.Enum):
    """What applying a document does."""

    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"


@dataclasses.dataclass(frozen=True)
class Change:
    """One document of the file and what applying it does."""

    document: PolicyDocument
    action: Action
    stored: policy_pb.Policy | None
    """The stored policy it replaces; None when it creates one."""

    @property
    def name(self) -> str:
        """The name of the policy."""
        return self.document.policy.name


def _rules_only(policy: policy_pb.Policy) -> policy_pb.Policy:
    """The parts of a policy a file sets: name, description and rules."""
    copy = policy_pb.Policy()
    copy.CopyFrom(policy)
    for field in ("id", "create_time", "update_time", "version"):
        copy.ClearField(field)
    return copy


def _without_new_policies(policy: policy_pb.Policy, new_names: frozenset[str]) -> policy_pb.Policy:
    """The policy as the service can check it now: without policies the file has yet to create."""
    if kind_of(policy) != "just_in_time" or not new_names:
        return policy
    checked = policy_pb.Policy()
    checked.CopyFrom(policy)
    kept = [p for p in policy.just_in_time.policy_ids if p not in new_names]
    del checked.just_in_time.policy_ids[:]
    checked.just_in_time.policy_ids.extend(kept)
    return checked


def plan_file(
    client: Client, text: str, source: str, mode: Mode, replace: str = ""
) -> list[Change]:
    """The changes applying the file `text` would make; InvalidArgument (or the service's error)
    naming `source:LINE` if any document is wrong.

    `replace`: the id of one stored policy that the file's single document replaces whatever
    its name (`zli policy update --policy`, which can rename a policy).
    """
    stored = {p.name: p for p in policies(client)}
    by_id = {p.id: p for p in stored.values()}
    if replace and replace not in by_id:
        raise NotFound(f"no policy {replace!r}: `zli policy list` shows them")
    # Just-in-time policies may name policies the same file creates, before those exist.
    new_names = declared_names(text) - stored.keys() if mode is not Mode.UPDATE else frozenset()
    documents = parse_policies(text, source, ServiceNames(client, new_names))
    if replace and len(documents) != 1:
        raise InvalidArgument(f"{source}: holds {len(documents)} policies; name one to replace")
    changes = [
        _change(d, by_id[replace] if replace else stored.get(d.policy.name), mode)
        for d in documents
    ]
    new_names = frozenset(c.name for c in changes if c.action is Action.CREATE)
    for change in changes:
        if change.action is Action.UNCHANGED:
            continue
        request = policy_pb.CheckPolicyRequest(
            policy=_without_new_policies(change.document.policy, new_names)
        )
        try:
            client.call(client.policy.CheckPolicy, request)
        except InvalidArgument as error:
            raise InvalidArgument(
                f"{change.document.where}: the policy {change.name!r} is not valid: {error.message}"
            ) from None
    return changes


def _change(document: PolicyDocument, stored: policy_pb.Policy | None, mode: Mode) -> Change:
    name, kind = document.policy.name, kind_of(document.policy)
    if stored is None:
        if mode is Mode.UPDATE:
            raise NotFound(
                f"{document.where}: there is no policy {name!r} to update: "
                "`zli policy create` adds it"
            )
        return Change(document, Action.CREATE, None)
    if mode is Mode.CREATE:
        raise AlreadyExists(
            f"{document.where}: the policy {name!r} exists already: "
            "`zli policy update` or `zli policy import` changes it"
        )
    if kind_of(stored) != kind:
        raise InvalidArgument(
            f"{document.where}: the policy {stored.name!r} is a {kind_of(stored)} policy and "
            f"cannot become a {kind} policy: delete it first, or give this one another name"
        )
    if _rules_only(stored) == _rules_only(document.policy):
        return Change(document, Action.UNCHANGED, stored)
    return Change(document, Action.UPDATE, stored)


def apply_plan(
    client: Client, changes: list[Change], say: Callable[[str], None]
) -> list[policy_pb.Policy]:
    """Make the planned changes, saying each one; returns the stored policies.

    Just-in-time policies go last, so the policies they name exist by then.
    """
    ids: dict[str, str] = {}
    done: list[policy_pb.Policy] = []
    ordered = sorted(changes, key=lambda c: kind_of(c.document.policy) == "just_in_time")
    for change in ordered:
        policy = _with_ids(change.document.policy, ids)
        if change.action is Action.CREATE:
            request = policy_pb.CreatePolicyRequest(policy=policy)
            stored = client.call(client.policy.CreatePolicy, request).policy
            say(f"Created policy {stored.name!r} ({stored.id}).")
        elif change.action is Action.UPDATE:
            assert change.stored is not None
            policy.id = change.stored.id
            update = policy_pb.UpdatePolicyRequest(policy=policy)
            stored = client.call(client.policy.UpdatePolicy, update).policy
            say(f"Updated policy {stored.name!r} ({stored.id}) to version {stored.version}.")
        else:
            assert change.stored is not None
            stored = change.stored
            say(f"Unchanged policy {stored.name!r} ({stored.id}).")
        ids[change.name] = stored.id
        done.append(stored)
    return done


def _with_ids(policy: policy_pb.Policy, ids: dict[str, str]) -> policy_pb.Policy:
    """The policy with the names of policies created just now replaced by their ids."""
    copy = policy_pb.Policy()
    copy.CopyFrom(policy)
    if kind_of(copy) == "just_in_time":
        named = [ids.get(p, p) for p in copy.just_in_time.policy_ids]
        del copy.just_in_time.policy_ids[:]
        copy.just_in_time.policy_ids.extend(named)
    return copy
