"""`zli access`: just-in-time access: ask for the access a just-in-time policy offers, and decide.

A user asks with `zli access request POLICY --duration 2h --reason "…"`; an approver named by the
policy sees pending requests in `zli access list` and approves or denies them. Approved access
ends by itself at the request's expiry time.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from bastion.policy.v1 import policy_service_pb2 as policy_pb
from mrzap.errors import PermissionDenied

from ._client import Client
from ._context import client
from ._errors import clear_errors
from ._format import (
    duration_message,
    duration_option,
    duration_text,
    field_time,
    json_option,
    table,
    to_json,
)
from ._listing import echo_list, pages
from ._policy_names import policies

__all__ = ["STATES", "access_group"]

#: Access request states by the lowercase name zli shows and accepts.
STATES: dict[str, policy_pb.AccessRequestState.ValueType] = {
    name.removeprefix("ACCESS_REQUEST_STATE_").lower(): value
    for name, value in policy_pb.AccessRequestState.items()
    if value != policy_pb.ACCESS_REQUEST_STATE_UNSPECIFIED
}
_PAGE_SIZE = 100


@click.group("access")
def access_group() -> None:
    """Just-in-time access: ask for temporary access, and approve or deny requests."""


def _policy_names(service: Client) -> dict[str, str]:
    """Policy names by id; empty for callers who may not list policies (they see ids)."""
    try:
        return {p.id: p.name for p in policies(service)}
    except PermissionDenied:
        return {}


def _policy_id(service: Client, ref: str) -> str:
    """The id of the policy named `ref`; `ref` itself if no policy has that name."""
    names = _policy_names(service)
    return next((policy_id for policy_id, name in names.items() if name == ref), ref)


def _state_name(state: int) -> str:
    return next((name for name, value in STATES.items() if value == state), "unknown")


def _summary(request: policy_pb.AccessRequest, policy_name: str) -> str:
    duration = duration_text(request.duration.ToTimedelta().total_seconds())
    state = _state_name(request.state)
    if request.state == policy_pb.ACCESS_REQUEST_STATE_APPROVED:
        until = field_time(request, "expire_time")
        return f"Access request {request.id} for {policy_name!r} is approved until {until} UTC."
    if request.state == policy_pb.ACCESS_REQUEST_STATE_PENDING:
        return (
            f"Access request {request.id} for {policy_name!r} ({duration}) is pending: "
            f"an approver runs `zli access approve {request.id}`."
        )
    return f"Access request {request.id} for {policy_name!r} is {state}."


@access_group.command("request")
@click.argument("policy_ref", metavar="POLICY")
@duration_option("--duration", help="How long you need the access, e.g. 2h.", default="1h")
@click.option("--reason", required=True, help="Why you need it; approvers see it.")
@json_option
@click.pass_context
@clear_errors
def request_command(
    ctx: click.Context, policy_ref: str, duration: int, reason: str, as_json: bool
) -> None:
    """Ask for the access the just-in-time POLICY (name or id) offers."""
    service = client(ctx)
    request = policy_pb.RequestAccessRequest(
        policy_id=_policy_id(service, policy_ref),
        reason=reason,
        duration=duration_message(duration),
    )
    created = service.call(service.policy.RequestAccess, request).access_request
    click.echo(to_json(created) if as_json else _summary(created, policy_ref))


@access_group.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(list(STATES)),
    help="Only requests in this state; repeatable.",
)
@click.option(
    "--all-pages", is_flag=True, help=f"Every request (default: the {_PAGE_SIZE} newest)."
)
@json_option
@click.pass_context
@clear_errors
def list_command(
    ctx: click.Context, states: tuple[str, ...], all_pages: bool, as_json: bool
) -> None:
    """List your access requests and those you may decide, newest first."""
    service = client(ctx)
    request = policy_pb.ListAccessRequestsRequest(
        page_size=_PAGE_SIZE, states=[STATES[s] for s in states]
    )

    def fetch(token: str) -> tuple[Sequence[policy_pb.AccessRequest], str]:
        request.page_token = token
        answer = service.call(service.policy.ListAccessRequests, request)
        return answer.access_requests, answer.next_page_token

    found, more = pages(fetch, all_pages)
    echo_list(
        found,
        as_json=as_json,
        empty="No access requests.",
        render=lambda shown: _table(shown, _policy_names(service)),
        more=f"(only the {_PAGE_SIZE} newest: add --all-pages for every one)" if more else None,
    )


def _table(found: Sequence[policy_pb.AccessRequest], names: dict[str, str]) -> str:
    return table(
        ("ID", "POLICY", "REQUESTER", "STATE", "DURATION", "EXPIRES (UTC)", "REASON"),
        (
            (
                r.id,
                names.get(r.policy_id, r.policy_id),
                r.requester_email or r.requester_user_id,
                _state_name(r.state),
                duration_text(r.duration.ToTimedelta().total_seconds()),
                field_time(r, "expire_time", "-"),
                r.reason,
            )
            for r in found
        ),
    )


def _decide(ctx: click.Context, request_id: str, comment: str, *, approve: bool) -> None:
    service = client(ctx)
    if approve:
        approved = policy_pb.ApproveAccessRequest(access_request_id=request_id, comment=comment)
        decided = service.call(service.policy.ApproveAccess, approved).access_request
    else:
        denied = policy_pb.DenyAccessRequest(access_request_id=request_id, comment=comment)
        decided = service.call(service.policy.DenyAccess, denied).access_request
    name = _policy_names(service).get(decided.policy_id, decided.policy_id)
    who = decided.requester_email or decided.requester_user_id
    click.echo(_summary(decided, name) + f" Requested by {who}.")


@access_group.command("approve")
@click.argument("request_id", metavar="ID")
@click.option("--comment", default="", help="Why; the requester and the audit log see it.")
@click.pass_context
@clear_errors
def approve_command(ctx: click.Context, request_id: str, comment: str) -> None:
    """Approve the pending access request ID; the access starts now."""
    _decide(ctx, request_id, comment, approve=True)


@access_group.command("deny")
@click.argument("request_id", metavar="ID")
@click.option("--comment", default="", help="Why; the requester and the audit log see it.")
@click.pass_context
@clear_errors
def deny_command(ctx: click.Context, request_id: str, comment: str) -> None:
    """Deny the pending access request ID."""
    _decide(ctx, request_id, comment, approve=False)
