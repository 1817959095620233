"""The `zli` command line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from bastion.auth.v1 import auth_service_pb2 as auth_pb
from mrzap import __version__, errors

from ._client import ServiceClient
from ._login import LoginOptions, login
from ._state import StateDir

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Exit codes by error class; anything else exits 1 (and usage errors 2, as click does).
EXIT_CODES: dict[type[errors.MrzapError], int] = {
    errors.Unauthenticated: 3,
    errors.PermissionDenied: 4,
    errors.NotFound: 5,
    errors.Unavailable: 6,
    errors.ResourceExhausted: 7,
    errors.InvalidArgument: 8,
    errors.FailedPrecondition: 9,
}


def _clear_errors(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """Print a MrzapError as one clear line and exit with its code, instead of a traceback."""

    @functools.wraps(command)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(*args, **kwargs)
        except errors.MrzapError as error:
            click.echo(f"zli: {error.message}", err=True)
            code = next((c for cls, c in EXIT_CODES.items() if isinstance(error, cls)), 1)
            sys.exit(code)

    return run


def _state_dir(ctx: click.Context) -> StateDir:
    path: Path | None = ctx.obj
    return StateDir(path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zli")
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MRZAP_CONFIG_DIR",
    help="Where zli keeps its session key and tokens (default ~/.config/mrzap).",
)
@click.pass_context
def main(ctx: click.Context, config_dir: Path | None) -> None:
    """mrzap command-line client: log in, then reach targets through the service."""
    ctx.obj = config_dir


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
@_clear_errors
def login_command(
    ctx: click.Context, server: str, ca_file: str, no_browser: bool, timeout: int
) -> None:
    """Log in with your organisation's identity provider, then MFA."""
    options = LoginOptions(server, ca_file, open_browser=not no_browser, timeout_s=timeout)
    state = login(
        options,
        _state_dir(ctx),
        say=lambda text: click.echo(text),
        ask=lambda text: str(click.prompt(text, type=str)),
    )
    click.echo(f"Logged in as {state.email or 'your IdP account'}.")


@main.command("logout")
@click.pass_context
@_clear_errors
def logout_command(ctx: click.Context) -> None:
    """End the session and forget its key and tokens."""
    state_dir = _state_dir(ctx)
    try:
        client = ServiceClient.from_state(state_dir)
        client.call(client.auth.Logout, auth_pb.LogoutRequest())
    except errors.Unauthenticated:
        pass  # already over on the service's side; forgetting it locally is all that is left
    finally:
        state_dir.clear()
    click.echo("Logged out.")


@main.command("whoami")
@click.pass_context
@_clear_errors
def whoami_command(ctx: click.Context) -> None:
    """Show who you are logged in as."""
    client = ServiceClient.from_state(_state_dir(ctx))
    answer = client.call(client.auth.WhoAmI, auth_pb.WhoAmIRequest())
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
@_clear_errors
def mfa_reset_command(ctx: click.Context, user: str) -> None:
    """Reset USER's MFA (id or email); they enrol again at their next login. Administrators only."""
    client = ServiceClient.from_state(_state_dir(ctx))
    answer = client.call(client.auth.ResetMfa, auth_pb.ResetMfaRequest(user=user))
    click.echo(f"MFA reset for {answer.user.email or answer.user.id}; their sessions have ended.")
