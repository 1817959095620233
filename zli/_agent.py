"""`zli agent install-command`: the shell commands that install and register an agent on a host.

The command creates a single-use, short-lived activation token for one new target (DESIGN.md
section 3, flow 3). An administrator's login (or administrator API key) creates it directly, so no
long-lived secret is written into the commands; with `--registration-key` anyone holding that
key can create it, and the target joins the key's environment. The printed commands pin the
service's CA by its SHA-256 fingerprint, so the agent trusts only this service from the start.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.errors import InvalidArgument
from mrzap.tls import ca_fingerprint

from . import _resolve
from ._client import Client
from ._context import anonymous_client, client
from ._errors import clear_errors
from ._format import json_option, time_text, to_json

__all__ = ["agent_group", "install_commands"]

#: The systemd unit shipped in the repository's deploy/ folder.
UNIT_FILE = "deploy/systemd/mrzap-agent.service"
#: Where the printed commands install the agent.
AGENT_VENV = "/opt/mrzap-agent"


@click.group("agent")
def agent_group() -> None:
    """Agents: the daemon on each target that dials out."""


def install_commands(
    package: str, server: str, activation_token: str, fingerprint: str
) -> list[str]:
    """The commands to run as root on the new target, each quoted for a POSIX shell.

    The agent gets its own virtual environment: distributions that mark their Python as
    externally managed (PEP 668) refuse a system-wide pip install. The link puts it where the
    systemd unit runs it.
    """
    register = ["mrzap-agent", "register", "--server", server]
    register += ["--activation-token", activation_token]
    if fingerprint:
        register += ["--ca-fingerprint", fingerprint]
    return [
        f"python3 -m venv {AGENT_VENV}",
        f"{AGENT_VENV}/bin/pip install {shlex.quote(package)}",
        f"ln -sf {AGENT_VENV}/bin/mrzap-agent /usr/local/bin/mrzap-agent",
        shlex.join(register),
        f"install -m 0644 {UNIT_FILE} /etc/systemd/system/mrzap-agent.service",
        "systemctl daemon-reload",
        "systemctl enable --now mrzap-agent",
    ]


def _fingerprint(service: Client) -> str:
    if not service.ca_file:
        return ""  # the service's certificate chains to the system's roots, as the agent's will
    try:
        return ca_fingerprint(Path(service.ca_file).read_bytes())
    except (OSError, ValueError) as error:
        raise InvalidArgument(
            f"cannot read the CA certificate {service.ca_file}: {error}"
        ) from None


@agent_group.command("install-command")
@click.option(
    "--env", default="", help="The new target's environment (name or id; default: the service's)."
)
@click.option("--name", default="", help="The new target's name (default: its host name).")
@click.option(
    "--registration-key",
    envvar="MRZAP_REGISTRATION_KEY",
    default="",
    help="Create the token with this registration key instead of your administrator rights "
    "(default $MRZAP_REGISTRATION_KEY; the key's environment applies).",
)
@click.option(
    "--package",
    default="mrzap",
    show_default=True,
    help="What pip installs on the target: a package name, a wheel (path or URL) or "
    "git+https://… of the repository.",
)
@click.option(
    "--agent-server",
    default="",
    metavar="HOST:PORT",
    help="The service address as the target reaches it (default: the one zli calls).",
)
@json_option
@click.pass_context
@clear_errors
def install_command(
    ctx: click.Context,
    env: str,
    name: str,
    registration_key: str,
    package: str,
    agent_server: str,
    as_json: bool,
) -> None:
    """Print the commands that install and register an agent on a new target.

    They carry a single-use activation token that expires soon: run them on the target now.
    """
    if registration_key and env:
        raise InvalidArgument(
            "--env does not go with --registration-key: the key's environment applies"
        )
    service = anonymous_client(ctx) if registration_key else client(ctx)
    request = registry_pb.CreateActivationTokenRequest(
        registration_key=registration_key, target_name=name
    )
    if env:
        request.environment_id = _resolve.environment(service, env).id
    answer = service.call(service.registry.CreateActivationToken, request)
    commands = install_commands(
        package, agent_server or service.server, answer.activation_token, _fingerprint(service)
    )
    if as_json:
        click.echo(
            to_json(
                {
                    "activation_token": answer.activation_token,
                    "expire_time": time_text(answer.expire_time) + " UTC",
                    "target": answer.target,
                    "commands": commands,
                }
            )
        )
        return
    target = answer.target
    click.echo(
        f"# New target {target.name or '(named after its host)'} ({target.id}).\n"
        f"# The activation token works once, until {time_text(answer.expire_time)} UTC.\n"
        f"# Run as root on the target, from a copy of the mrzap repository (for {UNIT_FILE}):"
    )
    click.echo("\n".join(commands))
