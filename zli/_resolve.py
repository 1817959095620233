"""Turning what people type (names) into what the service wants (ids), and reading every page."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.errors import InvalidArgument, NotFound, PermissionDenied

from ._client import Client

__all__ = [
    "all_pages",
    "api_key_id",
    "api_keys",
    "environment",
    "environment_names",
    "environments",
    "is_uuid",
    "registration_key_id",
    "registration_keys",
    "target",
]

_PAGE_SIZE = 500
_Item = TypeVar("_Item")


class _Named(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...


def all_pages(fetch: Callable[[str], tuple[Sequence[_Item], str]]) -> Iterator[_Item]:
    """Every item of a paged list; `fetch(page_token)` returns a page and the next token."""
    token = ""
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return


def _pick(kind: str, ref: str, items: Iterator[_Named]) -> str:
    """The id of the one item whose id or name is `ref`; `ref` itself when none matches."""
    by_name = []
    for item in items:
        if item.id == ref:
            return item.id
        if item.name == ref:
            by_name.append(item.id)
    if len(by_name) > 1:
        raise InvalidArgument(
            f"{len(by_name)} {kind}s are named {ref!r}: name one by id ({', '.join(by_name)})"
        )
    # Not listed: pass it on as an id, and let the service say what it knows about it.
    return by_name[0] if by_name else ref


def environments(client: Client) -> Iterator[registry_pb.Environment]:
    """Every environment."""

    def fetch(token: str) -> tuple[Sequence[registry_pb.Environment], str]:
        request = registry_pb.ListEnvironmentsRequest(page_size=_PAGE_SIZE, page_token=token)
        answer = client.call(client.registry.ListEnvironments, request)
        return answer.environments, answer.next_page_token

    return all_pages(fetch)


def environment(client: Client, ref: str) -> registry_pb.Environment:
    """The environment whose id or name is `ref`."""
    found = [env for env in environments(client) if ref in (env.id, env.name)]
    exact = [env for env in found if env.id == ref] or found
    if not exact:
        raise NotFound(f"no environment {ref!r}: `zli env list` shows them")
    return exact[0]


def environment_names(client: Client) -> dict[str, str]:
    """Environment names by id; empty for users who may not list environments (ids are shown)."""
    try:
        return {env.id: env.name for env in environments(client)}
    except PermissionDenied:
        return {}


def target(client: Client, ref: str) -> registry_pb.GetTargetResponse:
    """The target whose name (or id) is `ref`, with its state history.

    Users who are not administrators find only the targets the policies let them reach.
    """
    request = registry_pb.ListTargetsRequest(name=ref, page_size=2)
    named = client.call(client.registry.ListTargets, request).targets
    if len(named) == 1:
        target_id = named[0].id
    elif is_uuid(ref):
        target_id = ref
    elif named:
        raise InvalidArgument(
            f"several targets are named {ref!r}: name one by id "
            "(`zli targets list --name` shows them)"
        )
    else:
        raise NotFound(f"no target named {ref!r}: `zli targets list` shows those you may see")
    return client.call(client.registry.GetTarget, registry_pb.GetTargetRequest(target_id=target_id))


def registration_keys(client: Client) -> Iterator[registry_pb.RegistrationKey]:
    """Every registration key not revoked."""

    def fetch(token: str) -> tuple[Sequence[registry_pb.RegistrationKey], str]:
        request = registry_pb.ListRegistrationKeysRequest(page_size=_PAGE_SIZE, page_token=token)
        answer = client.call(client.registry.ListRegistrationKeys, request)
        return answer.registration_keys, answer.next_page_token

    return all_pages(fetch)


def registration_key_id(client: Client, ref: str) -> str:
    """The id of the registration key whose id or name is `ref`."""
    return _pick("registration key", ref, registration_keys(client))


def api_keys(client: Client) -> Iterator[auth_pb.ApiKey]:
    """Every API key not revoked."""

    def fetch(token: str) -> tuple[Sequence[auth_pb.ApiKey], str]:
        request = auth_pb.ListApiKeysRequest(page_size=_PAGE_SIZE, page_token=token)
        answer = client.call(client.auth.ListApiKeys, request)
        return answer.api_keys, answer.next_page_token

    return all_pages(fetch)


def api_key_id(client: Client, ref: str) -> str:
    """The id of the API key whose id or name is `ref`."""
    return _pick("API key", ref, api_keys(client))


def is_uuid(text: str) -> bool:
    """Whether `text` is a UUID, as ids are: such a reference needs no lookup."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
