"""`mrzapd idp` / `python -m idp`: run the development IdP, or hash a password for its config."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from mrzap.errors import MrzapError

from ._config import DevIdpConfig
from ._keys import SigningKeys
from ._passwords import hash_password
from ._server import IdpServer

__all__ = ["idp_command"]

READY_LINE = "mrzap-idp listening on {issuer}"


@click.group(
    "idp",
    invoke_without_command=True,
    help="Run the development OIDC identity provider (never needed in production).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file with the clients and users (required to serve).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the signing key [default: server.data_dir of the config].",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Loopback address to listen on (server.host of the config when not given).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port to listen on; 0 picks a free one (server.port of the config when not given).",
)
@click.option(
    "--rotate-key",
    is_flag=True,
    help="Make a new signing key before serving; the previous public key stays in the JWKS.",
)
@click.pass_context
def idp_command(
    ctx: click.Context,
    config_path: Path | None,
    data_dir: Path | None,
    host: str,
    port: int,
    rotate_key: bool,
) -> None:
    """Serve the IdP until SIGTERM or SIGINT; prints one ready line with the issuer URL."""
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise click.UsageError("--config is required to run the identity provider")
    try:
        config = DevIdpConfig.from_toml(config_path)
    except MrzapError as exc:
        raise click.ClickException(exc.message) from exc
    # The command line wins over the config file, which wins over the built-in defaults.
    if ctx.get_parameter_source("host") == click.core.ParameterSource.DEFAULT:
        host = config.host
    if ctx.get_parameter_source("port") == click.core.ParameterSource.DEFAULT:
        port = config.port
    data_dir = data_dir or config.data_dir
    if data_dir is None:
        raise click.UsageError("no data directory: pass --data-dir or set server.data_dir")

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        keys = SigningKeys.load_or_create(data_dir, rotate=rotate_key)
        server = IdpServer(config, keys, host=host, port=port)
    except MrzapError as exc:
        raise click.ClickException(exc.message) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    if rotate_key:
        logging.getLogger(__name__).info("rotated the signing key; new kid %s", keys.kid)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, which runs on this (the main)
        # thread: call it from another thread so the handler returns and the loop can end.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(READY_LINE.format(issuer=server.issuer))
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.close()
    logging.getLogger(__name__).info("stopped")


@idp_command.command("hash-password")
def hash_password_command() -> None:
    """Read a password from stdin (one line) and print its hash for the config file."""
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise click.ClickException("the password is empty")
    click.echo(hash_password(password))
