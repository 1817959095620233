"""`zli env`: the environments that group targets."""

from __future__ import annotations

import click

from bastion.registry.v1 import registry_service_pb2 as registry_pb

from . import _resolve
from ._context import client
from ._errors import clear_errors
from ._format import duration_message, duration_option, duration_text, json_option, table, to_json

__all__ = ["env_group"]


@click.group("env")
def env_group() -> None:
    """Environments: groups of targets.

    Policies can select whole environments; each sets how long its targets may stay offline
    before they are terminated.
    """


@env_group.command("list")
@json_option
@click.pass_context
@clear_errors
def list_command(ctx: click.Context, as_json: bool) -> None:
    """List environments, by name."""
    found = list(_resolve.environments(client(ctx)))
    if as_json:
        click.echo(to_json(found))
    elif not found:
        click.echo("No environments.")
    else:
        click.echo(
            table(
                ("NAME", "OFFLINE CLEANUP", "ID", "DESCRIPTION"),
                (
                    (
                        env.name,
                        duration_text(env.offline_cleanup_timeout.ToTimedelta().total_seconds()),
                        env.id,
                        env.description,
                    )
                    for env in found
                ),
            )
        )


@env_group.command("create")
@click.argument("name")
@click.option("--description", default="", help="What the environment is for.")
@duration_option(
    "--offline-cleanup",
    help="How long a target may stay offline before it is terminated, e.g. 24h "
    "(default: the service's, 24h unless configured).",
)
@json_option
@click.pass_context
@clear_errors
def create_command(
    ctx: click.Context,
    name: str,
    description: str,
    offline_cleanup: int | None,
    as_json: bool,
) -> None:
    """Create the environment NAME (administrators only)."""
    service = client(ctx)
    request = registry_pb.CreateEnvironmentRequest(name=name, description=description)
    if offline_cleanup is not None:
        request.offline_cleanup_timeout.CopyFrom(duration_message(offline_cleanup))
    env = service.call(service.registry.CreateEnvironment, request).environment
    if as_json:
        click.echo(to_json(env))
        return
    cleanup = duration_text(env.offline_cleanup_timeout.ToTimedelta().total_seconds())
    click.echo(f"Created environment {env.name!r} ({env.id}); offline cleanup after {cleanup}.")


@env_group.command("delete")
@click.argument("env")
@click.pass_context
@clear_errors
def delete_command(ctx: click.Context, env: str) -> None:
    """Delete ENV (name or id), which must have no targets and no registration keys."""
    service = client(ctx)
    found = _resolve.environment(service, env)
    request = registry_pb.DeleteEnvironmentRequest(environment_id=found.id)
    service.call(service.registry.DeleteEnvironment, request)
    click.echo(f"Deleted environment {found.name!r} ({found.id}).")
