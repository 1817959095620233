"""`zli connections`: list your connections (administrators: anyone's) and close one.

Closing revokes the connection's grants with a service-signed revocation that the target's agent
enforces at once: a running shell or command ends, and the client's channel with it.
(`zli connections attach` is `zli connect`'s re-attach, added to this group by zli/_connect.py.)
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from bastion.broker.v1 import broker_service_pb2 as broker_pb
from bastion.broker.v1 import broker_service_pb2_grpc as broker_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.errors import InvalidArgument

from . import _audit
from ._client import Client
from ._context import client
from ._errors import clear_errors
from ._format import field_time, json_option, table, time_text, to_json
from ._listing import echo_list, pages

__all__ = ["CONNECTION_STATES", "connections_group"]

#: Connections shown without --all-pages.
FIRST_PAGE = 100

#: State names as zli shows them and takes them.
CONNECTION_STATES: dict[str, broker_pb.ConnectionState.ValueType] = {
    "pending": broker_pb.CONNECTION_STATE_PENDING,
    "open": broker_pb.CONNECTION_STATE_OPEN,
    "detached": broker_pb.CONNECTION_STATE_DETACHED,
    "closed": broker_pb.CONNECTION_STATE_CLOSED,
}


def broker(service: Client) -> broker_grpc.BrokerServiceStub:
    """The BrokerService stub on the client's channel."""
    return broker_grpc.BrokerServiceStub(service.channel)


@click.group("connections")
def connections_group() -> None:
    """Your shells, commands and tunnels on targets (administrators: everyone's)."""


@connections_group.command("list")
@click.option("--all", "all_users", is_flag=True, help="Every user's (administrators only).")
@click.option("--user", default="", help="Only this user's, by email or id (administrators only).")
@click.option("--target", default="", help="Only connections to this target (name or id).")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(list(CONNECTION_STATES)),
    help="Only connections in this state; repeatable (default: all but closed).",
)
@click.option(
    "--all-pages", is_flag=True, help=f"Every connection (default: the newest {FIRST_PAGE})."
)
@json_option
@click.pass_context
@clear_errors
def list_command(
    ctx: click.Context,
    all_users: bool,
    user: str,
    target: str,
    states: tuple[str, ...],
    all_pages: bool,
    as_json: bool,
) -> None:
    """List connections, newest first."""
    if all_users and user:
        raise InvalidArgument("give --all or --user, not both")
    service = client(ctx)
    request = broker_pb.ListConnectionsRequest(
        page_size=FIRST_PAGE,
        all_users=all_users,
        user_id=_audit.user_id(service, user) if user else "",
        target_id=_audit.target_id(service, target) if target else "",
        states=[CONNECTION_STATES[state] for state in states],
    )

    def fetch(token: str) -> tuple[Sequence[broker_pb.Connection], str]:
        request.page_token = token
        answer = service.call(broker(service).ListConnections, request)
        return answer.connections, answer.next_page_token

    connections, more = pages(fetch, all_pages)
    with_user = all_users or bool(user)

    def render(found: Sequence[broker_pb.Connection]) -> str:
        names = _audit.target_names(service)  # users see the targets they may reach
        headers = ["ID", "STATE", "TARGET", "AS", "WHAT", "OPENED (UTC)", "ENDS (UTC)"]
        if with_user:
            headers.insert(2, "USER")
        return table(headers, (_row(c, names, with_user=with_user) for c in found))

    echo_list(
        connections,
        as_json=as_json,
        empty="No connections.",
        render=render,
        more=f"(only the newest {FIRST_PAGE}: add --all-pages for every one)" if more else None,
    )


def _row(c: broker_pb.Connection, names: dict[str, str], *, with_user: bool) -> list[str]:
    row = [
        c.id,
        _state_name(c.state),
        names.get(c.target_id, c.target_id),
        c.target_user,
        _verb_name(c.verb),
        time_text(c.create_time),
        field_time(c, "close_time") if c.HasField("close_time") else time_text(c.expire_time),
    ]
    if with_user:
        row.insert(2, c.subject.email or c.user_id)
    return row


@connections_group.command("close")
@click.argument("connection_id")
@click.option("--reason", default="", help="Why it is closed; kept in the audit log.")
@json_option
@click.pass_context
@clear_errors
def close_command(ctx: click.Context, connection_id: str, reason: str, as_json: bool) -> None:
    """Close CONNECTION_ID: its grants are revoked and the target ends it at once."""
    service = client(ctx)
    answer = service.call(
        broker(service).CloseConnection,
        broker_pb.CloseConnectionRequest(connection_id=connection_id, reason=reason),
    )
    if as_json:
        click.echo(to_json(answer.connection))
        return
    click.echo(f"Connection {answer.connection.id} closed.")


def _state_name(state: int) -> str:
    for name, value in CONNECTION_STATES.items():
        if value == state:
            return name
    return "unknown"


def _verb_name(verb: int) -> str:
    try:
        name = mrzap_pb2.Verb.Name(mrzap_pb2.Verb.ValueType(verb))
    except ValueError:  # a newer service's verb
        return "unknown"
    return name.removeprefix("VERB_").lower().replace("_", " ")
