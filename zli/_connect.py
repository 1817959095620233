"""`zli connect`, `zli exec` and `zli connections attach`: a shell or a command on a target.

Each command turns what the user typed into a `ChannelRequest`, opens the channel
(zli._channel) and runs the session (zli._session) with the terminal in raw mode when it is one.
zli then ends with the remote process's exit status, so scripts see it as they would with ssh.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import sys
from collections.abc import Callable, Iterator

import click
import grpc

from bastion.broker.v1 import broker_service_pb2 as broker_pb
from bastion.broker.v1 import broker_service_pb2_grpc as broker_grpc
from bastion.mrzap.v1 import mrzap_pb2
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.errors import InvalidArgument, MrzapError, NotFound, PermissionDenied
from mrzap.handshake import Action
from mrzap.programs import freeze_startup_objects

from ._channel import ChannelRequest, Identity, open_channel, resolve_target, secure_channel
from ._client import ServiceClient
from ._context import client
from ._errors import clear_errors
from ._session import Ended, run_session
from ._terminal import raw_mode, window_size

__all__ = ["attach_command", "connect_command", "exec_command", "split_destination"]

#: A shell reports a process a signal ended as 128 + the signal's number.
_SIGNAL_BASE = 128
#: zli's exit status when the user interrupts it.
_INTERRUPTED = _SIGNAL_BASE + signal.SIGINT
_PAGE_SIZE = 500


def split_destination(destination: str) -> tuple[str, str]:
    """(user, target) of `[USER@]TARGET`; the user defaults to the local login name."""
    user, at, target = destination.rpartition("@")
    if not target or (at and not user):
        raise InvalidArgument(f"{destination!r} is not [USER@]TARGET")
    return (user if at else getpass.getuser()), target


@click.command("connect")
@click.argument("destination", metavar="[USER@]TARGET")
@click.option(
    "--attach",
    "attach_id",
    default="",
    metavar="ID",
    help="Re-attach to connection ID (a shell left running with ~.) instead of a new shell.",
)
@click.pass_context
@clear_errors
def connect_command(ctx: click.Context, destination: str, attach_id: str) -> None:
    """Open a shell on TARGET as USER (default: your local login name).

    Type ~. after a newline to detach: the shell keeps running, and
    `zli connections attach ID` returns to it. ~? lists the escapes.
    """
    user, target = split_destination(destination)
    rows, cols = _size()
    action: Action
    if attach_id:
        action = mrzap_pb2.ShellAttach(
            target_user=user, connection_id=attach_id, rows=rows, cols=cols
        )
    else:
        term = os.environ.get("TERM", "") or "xterm-256color"
        action = mrzap_pb2.ShellOpen(target_user=user, term=term, rows=rows, cols=cols)
    _exit_with(_run(ctx, target, "", user, action, attach_id, interactive=True))


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("destination", metavar="[USER@]TARGET")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
@clear_errors
def exec_command(ctx: click.Context, destination: str, command: tuple[str, ...]) -> None:
    """Run COMMAND on TARGET as USER, without a terminal: `zli exec web-1 -- uname -a`.

    stdin goes to the command; its stdout and stderr come back separately, and zli exits with
    its exit status. The words are joined with spaces and run by the user's shell, as ssh does.
    """
    user, target = split_destination(destination)
    action = mrzap_pb2.Exec(target_user=user, command=" ".join(command))
    _exit_with(_run(ctx, target, "", user, action, "", interactive=False))


@click.command("attach")
@click.argument("connection_id", metavar="ID")
@click.option("--target", default="", help="The connection's target, when it cannot be looked up.")
@click.option("--user", default="", help="The connection's target user, with --target.")
@click.pass_context
@clear_errors
def attach_command(ctx: click.Context, connection_id: str, target: str, user: str) -> None:
    """Return to shell connection ID, showing its recent output first."""
    target_id = ""
    if not target:
        found = _find_connection(ctx, connection_id)
        target_id, user = found.target_id, user or found.target_user
        target = _target_name(ctx, target_id)
    rows, cols = _size()
    action = mrzap_pb2.ShellAttach(
        target_user=user or getpass.getuser(), connection_id=connection_id, rows=rows, cols=cols
    )
    _exit_with(
        _run(ctx, target, target_id, action.target_user, action, connection_id, interactive=True)
    )


def _run(
    ctx: click.Context,
    target: str,
    target_id: str,
    user: str,
    action: Action,
    connection_id: str,
    *,
    interactive: bool,
) -> Ended:
    login = _login(ctx)
    identity = Identity.from_login(login)
    verb = mrzap_pb2.VERB_SHELL if interactive else mrzap_pb2.VERB_EXEC

    def request(resolved: str) -> ChannelRequest:
        return ChannelRequest(resolved, target, verb, user, action, connection_id)

    try:
        return asyncio.run(
            _session(login, identity, target_id or target, request, interactive=interactive)
        )
    except KeyboardInterrupt:
        return Ended(_INTERRUPTED)


async def _session(
    login: ServiceClient,
    identity: Identity,
    target: str,
    request: Callable[[str], ChannelRequest],
    *,
    interactive: bool,
) -> Ended:
    async with secure_channel(login.server, login.ca_file) as grpc_channel:
        target_id = await resolve_target(grpc_channel, identity, target)
        channel = await open_channel(grpc_channel, identity, request(target_id))
        freeze_startup_objects()  # a session may last hours: no full collection of the imports
        terminal = raw_mode(0) if interactive else contextlib.nullcontext(False)
        with terminal as on_terminal, _ends_on(signal.SIGTERM, signal.SIGHUP) as ended_by:
            try:
                ended = await run_session(channel, escapes=on_terminal, follow_size=on_terminal)
            except asyncio.CancelledError:
                if not ended_by:
                    raise
                # Killed, or the terminal went away, and the terminal and descriptors are
                # restored by now: a shell is left running, as `~.` does; a command ends.
                channel.detach()
                ended = Ended(_SIGNAL_BASE + ended_by[0], detached=interactive)
        if ended.detached:
            click.echo(
                f"\ndetached; zli connections attach {channel.connection_id} to return", err=True
            )
        return ended


@contextlib.contextmanager
def _ends_on(*signals: signal.Signals) -> Iterator[list[int]]:
    """Turn `signals` into cancelling the current task (so the terminal is restored on the way
    out); yields the list that receives the signal that arrived."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    arrived: list[int] = []

    def end(number: int) -> None:
        arrived.append(number)
        if task is not None:
            task.cancel()

    for number in signals:
        loop.add_signal_handler(number, end, number)
    try:
        yield arrived
    finally:
        for number in signals:
            loop.remove_signal_handler(number)


def _exit_with(ended: Ended) -> None:
    sys.stdout.flush()
    sys.exit(ended.status)


def _size() -> tuple[int, int]:
    return window_size(0 if os.isatty(0) else 1)


def _login(ctx: click.Context) -> ServiceClient:
    found = client(ctx)
    if not isinstance(found, ServiceClient):
        raise PermissionDenied(
            "connecting to a target needs a user's login (`zli login`); API keys cannot connect"
        )
    return found


def _find_connection(ctx: click.Context, connection_id: str) -> broker_pb.Connection:
    """The caller's connection `connection_id`, from the broker's records."""
    service = client(ctx)
    stub = broker_grpc.BrokerServiceStub(service.channel)
    token = ""
    while True:
        try:
            page = service.call(
                stub.ListConnections,
                broker_pb.ListConnectionsRequest(page_size=_PAGE_SIZE, page_token=token),
            )
        except MrzapError as error:
            if error.status_code == grpc.StatusCode.UNIMPLEMENTED:
                raise InvalidArgument(
                    "this service keeps no connection records: name the target with --target"
                ) from None
            raise
        for connection in page.connections:
            if connection.id == connection_id:
                return connection
        token = page.next_page_token
        if not token:
            raise NotFound(f"no connection {connection_id!r}: `zli connections list` shows them")


def _target_name(ctx: click.Context, target_id: str) -> str:
    """The target's name for messages; its id if it cannot be read."""
    service = client(ctx)
    try:
        answer = service.call(
            service.registry.GetTarget, registry_pb.GetTargetRequest(target_id=target_id)
        )
    except MrzapError:
        return target_id
    return answer.target.name or target_id
