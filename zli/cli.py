"""The `zli` command line."""

from __future__ import annotations

from pathlib import Path

import click

from bastion.auth.v1 import auth_service_pb2 as auth_pb
from mrzap import __version__, errors

from ._client import ServiceClient
from ._context import ZliContext, client, state_dir
from ._errors import EXIT_CODES, clear_errors
from ._lazy import LazyCommand, LazyGroup

__all__ = ["EXIT_CODES", "main"]


def _add_attach(connections: click.Command) -> None:
    # `zli connections attach` lives with `zli connect` (zli._connect), the rest of the group
    # with the connection records (zli._connections).
    from ._connect import attach_command

    assert isinstance(connections, click.Group)
    connections.add_command(attach_command)


#: Subcommands imported only when run (see zli._lazy): `zli exec` imports what it needs only.
_LAZY = {
    "access": LazyCommand("zli._access:access_group"),
    "agent": LazyCommand("zli._agent:agent_group"),
    "connect": LazyCommand("zli._connect:connect_command"),
    "connections": LazyCommand("zli._connections:connections_group", then=_add_attach),
    "env": LazyCommand("zli._environments:env_group"),
    "exec": LazyCommand("zli._connect:exec_command"),
    "keys": LazyCommand("zli._keys:keys_group"),
    "lock": LazyCommand("zli._lock:lock_group"),
    "logs": LazyCommand("zli._logs:logs_group"),
    "policy": LazyCommand("zli._policy:policy_group"),
    "recording": LazyCommand("zli._recording:recording_group"),
    "targets": LazyCommand("zli._targets:targets_group"),
    "unlock": LazyCommand("zli._lock:unlock_group"),
}


@click.group(
    cls=LazyGroup,
    lazy_commands=_LAZY,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="zli")
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MRZAP_CONFIG_DIR",
    help="Where zli keeps its session key and tokens (default ~/.config/mrzap).",
)
@click.option(
    "--server",
    default="",
    metavar="HOST:PORT",
    help="Without a login (an API key, a registration key): the service to call "
    "(default $MRZAP_SERVER). A login remembers its own.",
)
@click.option(
    "--ca-file",
    default="",
    help="Without a login: the service's CA certificate (default $MRZAP_CA_FILE).",
)
@click.pass_context
def main(ctx: click.Context, config_dir: Path | None, server: str, ca_file: str) -> None:
    """mrzap command-line client: log in, then reach targets through the service.

    Scripts and CI can call as a service account instead of logging in: put an API key
    (`zli keys api create`) in $MRZAP_API_KEY and the service in $MRZAP_SERVER.
    """
    ctx.obj = ZliContext(config_dir, server, ca_file)


@main.command("login")
@click.option(
    "--server",
    envvar="MRZAP_SERVER",
    default="127.0.0.1:8443",
    show_default=True,
    help="The mrzap service, host:port.",
)
@click.option(
    "--ca-file",
    envvar="MRZAP_CA_FILE",
    default="",
    help="CA certificate of the service's TLS certificate (default: the system's roots).",
)
@click.option("--no-browser", is_flag=True, help="Print the login URL instead of opening it.")
@click.option("--timeout", default=300, show_default=True, help="Seconds to wait for the browser.")
@click.pass_context
@clear_errors
def login_command(
    ctx: click.Context, server: str, ca_file: str, no_browser: bool, timeout: int
) -> None:
    """Log in with your organisation's identity provider, then MFA."""
    from ._login import LoginOptions, login  # only `zli login` needs the OIDC client

    options = LoginOptions(server, ca_file, open_browser=not no_browser, timeout_s=timeout)
    state = login(
        options,
        state_dir(ctx),
        say=lambda text: click.echo(text),
        ask=lambda text: str(click.prompt(text, type=str)),
    )
    click.echo(f"Logged in as {state.email or 'your IdP account'}.")


@main.command("logout")
@click.pass_context
@clear_errors
def logout_command(ctx: click.Context) -> None:
    """End the session and forget its key and tokens."""
    saved = state_dir(ctx)
    try:
        session = ServiceClient.from_state(saved)
        session.call(session.auth.Logout, auth_pb.LogoutRequest())
    except errors.Unauthenticated:
        pass  # already over on the service's side; forgetting it locally is all that is left
    finally:
        saved.clear()
    click.echo("Logged out.")


@main.command("whoami")
@click.pass_context
@clear_errors
def whoami_command(ctx: click.Context) -> None:
    """Show who you are logged in as."""
    service = client(ctx)
    answer = service.call(service.auth.WhoAmI, auth_pb.WhoAmIRequest())
    user, session = answer.user, answer.session
    click.echo(f"email:    {user.email or '(not verified)'}")
    click.echo(f"user id:  {user.id}")
    click.echo(f"issuer:   {user.subject.iss}")
    click.echo(f"groups:   {', '.join(user.groups) or '-'}")
    click.echo(f"role:     {'administrator' if user.admin else 'user'}")
    click.echo(f"session:  expires {session.expire_time.ToDatetime():%Y-%m-%d %H:%M:%S} UTC")


@main.group("mfa")
def mfa_group() -> None:
    """Multi-factor authentication."""


@mfa_group.command("reset")
@click.argument("user")
@click.pass_context
@clear_errors
def mfa_reset_command(ctx: click.Context, user: str) -> None:
    """Reset USER's MFA (id or email); they enrol again at their next login. Administrators only."""
    service = client(ctx)
    answer = service.call(service.auth.ResetMfa, auth_pb.ResetMfaRequest(user=user))
    click.echo(f"MFA reset for {answer.user.email or answer.user.id}; their sessions have ended.")
