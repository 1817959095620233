"""The `mrzapd` command line: `serve`, `up` (the embedded default) and `idp`."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

import click

from idp.cli import idp_command
from mrzap import __version__
from mrzap.errors import MrzapError

from ._config import PolicySettings, ServiceConfig
from ._server import serve_until_stopped
from ._up import run_up


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mrzapd")
def main() -> None:
    """The mrzap service: authentication, registry, policy, broker and audit."""


_DB_OPTION = click.option(
    "--db",
    "database",
    metavar="URL",
    help="The database: sqlite:///PATH or postgresql://USER@HOST/NAME "
    "(default: [storage] database, else SQLite in the data directory).",
)

_POLICY_ENGINE_OPTION = click.option(
    "--policy-engine",
    metavar="ENGINE",
    help="The policy engine: embedded (default), opa (the real OPA engine in process) or "
    "opa+http://HOST:PORT (an OPA server) (default: [policy] engine).",
)


@main.command("serve")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The service configuration file (TOML).",
)
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where keys, TLS material and the SQLite database live.",
)
@_DB_OPTION
@_POLICY_ENGINE_OPTION
def serve_command(
    config_path: Path, data_dir: Path, database: str | None, policy_engine: str | None
) -> None:
    """Run the service roles with a configuration file."""
    try:
        config = ServiceConfig.from_toml(config_path, data_dir)
        if database:
            config = dataclasses.replace(config, database=database)
        if policy_engine:
            config = dataclasses.replace(config, policy=PolicySettings(policy_engine))
        asyncio.run(serve_until_stopped(config))
    except MrzapError as error:
        click.echo(f"mrzapd: {error.message}", err=True)
        sys.exit(1)


@main.command("up")
@click.option(
    "--data-dir",
    default=Path(".mrzap"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the embedded service keeps its state.",
)
@click.option("--port", default=8443, show_default=True, help="The service's port.")
@click.option("--idp-port", default=5556, show_default=True, help="The development IdP's port.")
@click.option(
    "--target-user",
    metavar="USER",
    help="The Unix user the demo users may act as here (default: the one running this; "
    "another needs root).",
)
@_DB_OPTION
@_POLICY_ENGINE_OPTION
def up_command(
    data_dir: Path,
    port: int,
    idp_port: int,
    target_user: str | None,
    database: str | None,
    policy_engine: str | None,
) -> None:
    """Start the embedded default: the service, a development IdP, SQLite, generated TLS."""
    try:
        run_up(data_dir, port, idp_port, database, policy_engine, target_user)
    except MrzapError as error:
        click.echo(f"mrzapd: {error.message}", err=True)
        sys.exit(1)


main.add_command(idp_command, "idp")
