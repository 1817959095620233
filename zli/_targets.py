"""`zli targets`: list, show, rename and delete the machines that run an agent."""

from __future__ import annotations

import base64

import click

from bastion.registry.v1 import registry_service_pb2 as registry_pb

from . import _resolve
from ._context import client
from ._errors import clear_errors
from ._format import (
    TARGET_STATES,
    field_time,
    json_option,
    state_name,
    table,
    time_text,
    to_json,
)

__all__ = ["targets_group"]

#: Targets shown without --all-pages.
FIRST_PAGE = 100


@click.group("targets")
def targets_group() -> None:
    """The machines that run an agent (administrators change them)."""


@targets_group.command("list")
@click.option(
    "--env",
    "envs",
    multiple=True,
    help="Only targets in this environment (name or id); repeatable.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(list(TARGET_STATES)),
    help="Only targets in this state; repeatable.",
)
@click.option("--name", default="", help="Only the target with exactly this name.")
@click.option("--all-pages", is_flag=True, help=f"Every target (default: the first {FIRST_PAGE}).")
@json_option
@click.pass_context
@clear_errors
def list_command(
    ctx: click.Context,
    envs: tuple[str, ...],
    states: tuple[str, ...],
    name: str,
    all_pages: bool,
    as_json: bool,
) -> None:
    """List targets, by name."""
    service = client(ctx)
    env_names = _resolve.environment_names(service)
    env_ids = [_resolve.environment(service, env).id for env in envs]
    request = registry_pb.ListTargetsRequest(
        page_size=FIRST_PAGE,
        environment_ids=env_ids,
        states=[TARGET_STATES[state] for state in states],
        name=name,
    )
    targets: list[registry_pb.Target] = []
    while True:
        answer = service.call(service.registry.ListTargets, request)
        targets.extend(answer.targets)
        if not answer.next_page_token or not all_pages:
            break
        request.page_token = answer.next_page_token
    if as_json:
        click.echo(to_json(targets))
        return
    if not targets:
        click.echo("No targets.")
        return
    click.echo(
        table(
            ("NAME", "STATE", "ENVIRONMENT", "HOSTNAME", "LAST SEEN (UTC)", "ID"),
            (
                (
                    t.name,
                    state_name(t.state),
                    env_names.get(t.environment_id, t.environment_id),
                    t.hostname or "-",
                    field_time(t, "last_seen_time"),
                    t.id,
                )
                for t in targets
            ),
        )
    )
    if answer.next_page_token and not all_pages:
        click.echo(f"(only the first {FIRST_PAGE}: add --all-pages for every target)", err=True)


@targets_group.command("show")
@click.argument("target")
@json_option
@click.pass_context
@clear_errors
def show_command(ctx: click.Context, target: str, as_json: bool) -> None:
    """Show TARGET (name or id) and the history of its states."""
    service = client(ctx)
    found = _resolve.target(service, target)
    if as_json:
        click.echo(to_json(found))
        return
    t = found.target
    env_names = _resolve.environment_names(service)
    env = env_names.get(t.environment_id, "")
    fields = [
        ("name", t.name),
        ("id", t.id),
        ("environment", f"{env} ({t.environment_id})" if env else t.environment_id),
        ("state", state_name(t.state)),
        ("hostname", t.hostname or "-"),
        ("agent version", t.agent_version or "-"),
        ("region", t.region or "-"),
        ("public key", base64.b64encode(t.public_key).decode() if t.public_key else "-"),
        ("created", time_text(t.create_time) + " UTC"),
        ("registered", _when(t, "register_time")),
        ("last seen", _when(t, "last_seen_time")),
    ]
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        click.echo(f"{label + ':':<{width}}{value}")
    click.echo("\nState history:")
    click.echo(
        table(
            ("TIME (UTC)", "STATE", "REASON"),
            ((time_text(c.time), state_name(c.state), c.reason) for c in found.state_changes),
        )
    )


def _when(target: registry_pb.Target, field: str) -> str:
    shown = field_time(target, field)
    return shown if shown == "never" else shown + " UTC"


@targets_group.command("rename")
@click.argument("target")
@click.argument("name")
@click.pass_context
@clear_errors
def rename_command(ctx: click.Context, target: str, name: str) -> None:
    """Give TARGET (name or id) a new NAME (administrators only)."""
    service = client(ctx)
    old = _resolve.target(service, target).target
    request = registry_pb.RenameTargetRequest(target_id=old.id, name=name)
    renamed = service.call(service.registry.RenameTarget, request).target
    click.echo(f"Renamed target {old.name!r} to {renamed.name!r} ({renamed.id}).")


@targets_group.command("delete")
@click.argument("target")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@clear_errors
def delete_command(ctx: click.Context, target: str, yes: bool) -> None:
    """Forget TARGET (name or id) and its key (administrators only).

    Its agent is disconnected and must register again with a new activation token.
    """
    service = client(ctx)
    found = _resolve.target(service, target).target
    if not yes:
        click.confirm(
            f"Delete target {found.name!r} ({found.id})? Its agent must register again",
            abort=True,
        )
    request = registry_pb.DeleteTargetRequest(target_id=found.id)
    service.call(service.registry.DeleteTarget, request)
    click.echo(f"Deleted target {found.name!r} ({found.id}).")
