"""`zli lock user` and `zli unlock user`: an administrator's emergency stop for one user.

Locking ends the user's sessions, refuses their logins and calls, and sends a service-signed
revocation of all their grants to every agent, which ends their connections at once
(BrokerService.LockUser). Unlocking lets them log in again; what the lock ended stays ended.
"""

from __future__ import annotations

import click

from bastion.broker.v1 import broker_service_pb2 as broker_pb
from bastion.broker.v1 import broker_service_pb2_grpc as broker_grpc

from ._context import client
from ._errors import clear_errors
from ._format import json_option, to_json

__all__ = ["lock_group", "unlock_group"]


@click.group("lock")
def lock_group() -> None:
    """Lock users out at once (administrators only)."""


@click.group("unlock")
def unlock_group() -> None:
    """Lift a lock (administrators only)."""


@lock_group.command("user")
@click.argument("user")
@click.option("--reason", default="", help="Why; kept with the lock and in the audit log.")
@json_option
@click.pass_context
@clear_errors
def lock_user_command(ctx: click.Context, user: str, reason: str, as_json: bool) -> None:
    """Lock USER (id or email): end their sessions and connections, refuse their logins."""
    service = client(ctx)
    answer = service.call(
        broker_grpc.BrokerServiceStub(service.channel).LockUser,
        broker_pb.LockUserRequest(user=user, reason=reason),
    )
    if as_json:
        click.echo(to_json(answer))
        return
    closed = list(answer.closed_connection_ids)
    click.echo(f"Locked {user}: their sessions have ended and they cannot log in.")
    click.echo(f"Revocation {answer.revocation_id} sent to every agent.")
    if closed:
        click.echo(f"Connections ended: {', '.join(closed)}")
    click.echo(f"Undo with `zli unlock user {user}`.")


@unlock_group.command("user")
@click.argument("user")
@click.pass_context
@clear_errors
def unlock_user_command(ctx: click.Context, user: str) -> None:
    """Unlock USER (id or email): they may log in again; ended sessions stay ended."""
    service = client(ctx)
    service.call(
        broker_grpc.BrokerServiceStub(service.channel).UnlockUser,
        broker_pb.UnlockUserRequest(user=user),
    )
    click.echo(f"Unlocked {user}: they may log in again.")
