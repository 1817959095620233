"""The `mrzap-agent` command line: `register` once, then `run` (under systemd or in a container)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import NoReturn

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrzap import __version__
from mrzap.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MrzapError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from mrzap.programs import freeze_startup_objects

from ._backoff import Backoff
from ._channels import AgentChannels
from ._config import AgentConfig, AgentFiles, default_config_dir
from ._control import AgentStopped, ControlLoop
from ._leftovers import LEDGER_FILE, CommandLedger, end_leftovers
from ._local_policy import LOCAL_POLICY_FILE, LocalPolicy
from ._recording_tap import Recorder
from ._register import RegistrationRequest, register
from ._sessions import Sessions
from ._verifier import SynHandler

#: The agent must not be restarted: it is not registered, or its target is gone (sysexits
#: EX_CONFIG). The systemd unit lists it in RestartPreventExitStatus.
EXIT_DO_NOT_RESTART = 78

_EXIT_CODES: tuple[tuple[type[MrzapError], int], ...] = (
    (AgentStopped, EXIT_DO_NOT_RESTART),
    (Unauthenticated, 3),
    (PermissionDenied, 4),
    (NotFound, 5),
    (Unavailable, 6),
    (ResourceExhausted, 7),
    (InvalidArgument, 8),
    (FailedPrecondition, 9),
    (AlreadyExists, 10),
)


#: The signals a terminal and job control send; see `_run`.
_TERMINAL_SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


def _fail(error: MrzapError) -> NoReturn:
    click.echo(f"mrzap-agent: {error.message}", err=True)
    for kind, code in _EXIT_CODES:
        if isinstance(error, kind):
            sys.exit(code)
    sys.exit(1)


_CONFIG_DIR = click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the agent keeps its key and configuration "
    "(default: $MRZAP_AGENT_CONFIG_DIR, else /etc/mrzap-agent).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mrzap-agent")
def main() -> None:
    """mrzap target agent: registers once, then keeps one outbound stream to the service."""


@main.command("register")
@click.option("--server", required=True, metavar="HOST:PORT", help="The mrzap service.")
@click.option(
    "--registration-key",
    default="",
    metavar="KEY",
    help="A registration key secret.",
    envvar="MRZAP_REGISTRATION_KEY",
)
@click.option(
    "--activation-token",
    default="",
    metavar="TOKEN",
    help="A single-use activation token.",
    envvar="MRZAP_ACTIVATION_TOKEN",
)
@click.option("--name", default="", help="The target's name (default: the host name).")
@click.option(
    "--environment",
    default="",
    metavar="ID",
    help="The environment id (a registration key's own environment takes precedence).",
)
@click.option("--region", default="", help="The region this machine runs in.")
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The service's CA certificate.",
)
@click.option(
    "--ca-fingerprint",
    default="",
    metavar="SHA256",
    help="Learn the service's CA from its TLS chain, accepting only this SHA-256 fingerprint.",
)
@click.option("--force", is_flag=True, help="Replace an existing registration.")
@_CONFIG_DIR
def register_command(
    server: str,
    registration_key: str,
    activation_token: str,
    name: str,
    environment: str,
    region: str,
    ca_file: Path | None,
    ca_fingerprint: str,
    force: bool,
    config_dir: Path | None,
) -> None:
    """Register this machine as a target (once), and store its key and configuration."""
    files = AgentFiles(config_dir or default_config_dir())
    try:
        request = RegistrationRequest(
            server=server,
            registration_key=registration_key,
            activation_token=activation_token,
            name=name,
            environment_id=environment,
            region=region,
            ca_file_pem=ca_file.read_bytes() if ca_file else None,
            ca_fingerprint=ca_fingerprint,
            force=force,
        )
        config = register(request, files)
    except MrzapError as error:
        _fail(error)
    click.echo(f"Registered as target {config.name} ({config.target_id}) in {files.directory}.")
    click.echo("Start it with: mrzap-agent run" + _dir_flag(config_dir))


def _dir_flag(config_dir: Path | None) -> str:
    return f" --config-dir {config_dir}" if config_dir else ""


@main.command("run")
@_CONFIG_DIR
@click.option(
    "--reconnect-base",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds: the ceiling of the first reconnection delay (exponential, full jitter).",
)
@click.option(
    "--reconnect-cap",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds: no reconnection delay is longer.",
)
@click.option("--verbose", "-v", is_flag=True, help="Also log debugging details.")
def run_command(
    config_dir: Path | None, reconnect_base: float, reconnect_cap: float, verbose: bool
) -> None:
    """Connect to the service and stay connected until SIGTERM or SIGINT."""
    logging.basicConfig(
        stream=sys.stdout, format="%(message)s", level=logging.DEBUG if verbose else logging.INFO
    )
    files = AgentFiles(config_dir or default_config_dir())
    try:
        config, key = files.load()
        local = LocalPolicy.from_file(files.directory / LOCAL_POLICY_FILE)
        backoff = Backoff(base_s=reconnect_base, cap_s=max(reconnect_cap, reconnect_base))
        with files.held():
            asyncio.run(_run(config, key, local, backoff, files.directory / LEDGER_FILE))
    except AgentStopped as error:
        _fail(error)
    except InvalidArgument as error:
        # Not registered, or a damaged configuration: restarting cannot help.
        click.echo(f"mrzap-agent: {error.message}", err=True)
        sys.exit(EXIT_DO_NOT_RESTART)
    except MrzapError as error:
        _fail(error)
    click.echo("mrzap-agent stopped")


async def _run(
    config: AgentConfig,
    key: Ed25519PrivateKey,
    local: LocalPolicy,
    backoff: Backoff,
    ledger_path: Path,
) -> None:
    # Before serving: the broker hears AgentStarted and closes the old process's connections.
    await end_leftovers(ledger_path)
    # The SYN handler and the running connections outlive control streams: a shell survives a
    # reconnection, and the replay cache and revocations must not be forgotten by one.
    sessions = Sessions(ledger=CommandLedger(ledger_path))
    channels = AgentChannels(SynHandler(config, key, local), sessions, recorder=Recorder(key))
    loop = ControlLoop(config, key, backoff=backoff, channels=channels)
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        running.add_signal_handler(signum, stop.set)
    # A signal ignored when the agent started (under nohup, as a script's background job) stays
    # ignored through exec in every shell and command it starts: a hung-up shell's jobs would
    # live on, Ctrl-C would interrupt nothing. A handler does not pass through exec: the agent
    # still ignores them, and what it starts begins with the defaults, as in an SSH session.
    ignored = [s for s in _TERMINAL_SIGNALS if signal.getsignal(s) == signal.SIG_IGN]
    for signum in ignored:
        running.add_signal_handler(signum, lambda: None)
    freeze_startup_objects()
    try:
        await loop.run(stop)
    finally:
        await sessions.close_all()
        for signum in (signal.SIGINT, signal.SIGTERM, *ignored):
            with contextlib.suppress(ValueError):
                running.remove_signal_handler(signum)
