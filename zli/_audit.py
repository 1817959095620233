"""What `zli recording` and `zli logs` share: the AuditService stub, server streams read with the
same credentials and error mapping as single calls, and names (emails, target names, times) turned
into what the audit filters want.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from bastion.audit.v1 import audit_service_pb2_grpc as audit_grpc
from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.errors import InvalidArgument, MrzapError, NotFound, PermissionDenied, from_rpc_error

from . import _resolve
from ._client import Client
from ._format import parse_duration

__all__ = [
    "audit",
    "parse_when",
    "stream",
    "target_id",
    "target_names",
    "user_id",
]

_T = TypeVar("_T")
_PAGE_SIZE = 500


def audit(client: Client) -> audit_grpc.AuditServiceStub:
    """The AuditService stub on the client's channel."""
    return audit_grpc.AuditServiceStub(client.channel)


def stream(
    client: Client, method: Callable[..., Iterator[_T]], request: object
) -> Generator[_T, None, None]:
    """The messages of a server-streaming call, without a deadline (a watch may last for hours).

    The call goes through `client.call`, so it carries the session (refreshed if it runs low) or
    the API key like every other call; an error while reading becomes the matching MrzapError.
    Closing the iterator early (Ctrl-C, a verification failure) cancels the call.
    """

    def start(request: object, *, metadata: Any, timeout: float | None) -> Iterator[_T]:  # noqa: ANN401 - grpc metadata
        del timeout  # a stream ends when the server ends it or the reader stops
        return method(request, metadata=metadata)

    responses = client.call(start, request)
    try:
        yield from responses
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
    finally:
        cancel = getattr(responses, "cancel", None)
        if cancel is not None:
            cancel()  # a no-op on a finished call; stops the server's side on an early exit


def user_id(client: Client, ref: str) -> str:
    """The service's id of the user `ref` names: an email address, or an id given as it is."""
    if "@" not in ref:
        return ref
    me = client.call(client.auth.WhoAmI, auth_pb.WhoAmIRequest()).user
    if me.email.lower() == ref.lower():
        return me.id

    def fetch(token: str) -> tuple[Sequence[auth_pb.User], str]:
        request = auth_pb.ListUsersRequest(page_size=_PAGE_SIZE, page_token=token)
        answer = client.call(client.auth.ListUsers, request)
        return answer.users, answer.next_page_token

    try:
        for user in _resolve.all_pages(fetch):
            if user.email.lower() == ref.lower():
                return user.id
    except PermissionDenied:
        raise PermissionDenied(
            f"only administrators may see other users' records, not {ref}'s"
        ) from None
    raise NotFound(f"no user with the email address {ref!r} has logged in")


def target_id(client: Client, ref: str) -> str:
    """The id of the target whose name (or id) is `ref`; a UUID is taken as is, without a lookup."""
    if _resolve.is_uuid(ref):
        return ref
    return _resolve.target(client, ref).target.id


def target_names(client: Client) -> dict[str, str]:
    """Target names by id, to show in tables; empty if the caller may not list targets."""

    def fetch(token: str) -> tuple[Sequence[registry_pb.Target], str]:
        request = registry_pb.ListTargetsRequest(page_size=_PAGE_SIZE, page_token=token)
        answer = client.call(client.registry.ListTargets, request)
        return answer.targets, answer.next_page_token

    try:
        return {target.id: target.name for target in _resolve.all_pages(fetch)}
    except MrzapError:
        return {}  # ids are still correct, only less friendly


def parse_when(text: str, now: float | None = None) -> float:
    """Seconds since the epoch for "2h" (that long ago) or an ISO 8601 time (UTC unless it says)."""
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(
            f"{text!r} is neither a duration ago (15m, 2h, 7d) nor a time (2026-12-03T09:30)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
