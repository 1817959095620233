"""Names in policy files, looked up on the service: targets, environments and policies.

`ServiceNames` is what `zli policy` gives the YAML reader (names → ids) and writer (ids → names).
It asks the service only for what a file mentions, and remembers each answer for the command's
lifetime, so a file naming one target fifty times costs one call.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence

from bastion.policy.v1 import policy_service_pb2 as policy_pb
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.errors import NotFound

from . import _resolve
from ._client import Client

__all__ = ["ServiceNames", "policies", "policy"]

_PAGE_SIZE = 500


def policies(client: Client) -> Iterator[policy_pb.Policy]:
    """Every policy, ordered by name."""

    def fetch(token: str) -> tuple[Sequence[policy_pb.Policy], str]:
        request = policy_pb.ListPoliciesRequest(page_size=_PAGE_SIZE, page_token=token)
        answer = client.call(client.policy.ListPolicies, request)
        return answer.policies, answer.next_page_token

    return _resolve.all_pages(fetch)


def policy(client: Client, ref: str, version: int = 0) -> policy_pb.Policy:
    """The policy whose name or id is `ref` (at `version`, 0 for the current one)."""
    found = next((p for p in policies(client) if ref in (p.id, p.name)), None)
    if found is None:
        raise NotFound(f"no policy {ref!r}: `zli policy list` shows them")
    if version == 0 or version == found.version:
        return found
    request = policy_pb.GetPolicyRequest(policy_id=found.id, version=version)
    return client.call(client.policy.GetPolicy, request).policy


class ServiceNames:
    """Names → ids for reading policy files, and ids → names for writing them."""

    def __init__(self, client: Client, new_policies: Iterable[str] = ()) -> None:
        """`new_policies`: names of policies that a file creates, which other policies of the
        same file may name before they exist; `policy_id` returns such a name unchanged."""
        self._client = client
        self._new_policies = frozenset(new_policies)

    # Names → ids (each raises LookupError with the reason when it finds nothing).

    def target_id(self, name: str) -> str:
        """The id of the one target named `name`."""
        request = registry_pb.ListTargetsRequest(name=name, page_size=2)
        found = self._client.call(self._client.registry.ListTargets, request).targets
        if not found:
            raise LookupError(f"no target named {name!r}: `zli targets list` shows them")
        if len(found) > 1:
            raise LookupError(f"several targets are named {name!r}: list them under `ids:`")
        return found[0].id

    def environment_id(self, ref: str) -> str:
        """The id of the environment whose id or name is `ref`."""
        if ref in self._environments:
            return ref
        named = [env_id for env_id, name in self._environments.items() if name == ref]
        if len(named) != 1:
            raise LookupError(f"no environment {ref!r}: `zli env list` shows them")
        return named[0]

    def policy_id(self, ref: str) -> str:
        """The id of the policy whose id or name is `ref` (or `ref`, for a new policy's name)."""
        if ref in self._policy_names:
            return ref
        for policy_id, name in self._policy_names.items():
            if name == ref:
                return policy_id
        if ref in self._new_policies:
            return ref
        raise LookupError(f"no policy {ref!r}: `zli policy list` shows them")

    # Ids → names (None when an id has no name the reader would turn back into it).

    def target_name(self, target_id: str) -> str | None:
        """The target's name, if no other target has it."""
        return self._target_name(target_id)

    def environment_name(self, environment_id: str) -> str | None:
        """The environment's name."""
        return self._environments.get(environment_id)

    def policy_name(self, policy_id: str) -> str | None:
        """The policy's name."""
        return self._policy_names.get(policy_id)

    @functools.cached_property
    def _environments(self) -> dict[str, str]:
        return _resolve.environment_names(self._client)

    @functools.cached_property
    def _policy_names(self) -> dict[str, str]:
        return {p.id: p.name for p in policies(self._client)}

    @functools.cache  # noqa: B019 - one instance per command: the cache dies with it
    def _target_name(self, target_id: str) -> str | None:
        request = registry_pb.GetTargetRequest(target_id=target_id)
        try:
            name = self._client.call(self._client.registry.GetTarget, request).target.name
        except NotFound:
            return None  # deleted since: the id is all there is to write
        try:
            same = self.target_id(name)
        except LookupError:
            return None
        return name if same == target_id else None
