"""`zli targets`: list, show, rename and delete the machines that run an agent."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import click

from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.errors import PermissionDenied

from . import _resolve
from ._client import Client
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
from ._listing import echo_list, pages

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
    """List the targets you may reach (administrators: every target), by name."""
    service = client(ctx)
    env_names = _resolve.environment_names(service)
    env_ids = [_environment_id(service, env) for env in envs]
    request = registry_pb.ListTargetsRequest(
        page_size=FIRST_PAGE,
        environment_ids=env_ids,
        states=[TARGET_STATES[state] for state in states],
        name=name,
    )

    def fetch(token: str) -> tuple[Sequence[registry_pb.Target], str]:
        request.page_token = token
        answer = service.call(service.registry.ListTargets, request)
        return answer.targets, answer.next_page_token

    targets, more = pages(fetch, all_pages)
    echo_list(
        targets,
        as_json=as_json,
        empty="No targets.",
        render=lambda found: table(
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
                for t in found
            ),
        ),
        more=f"(only the first {FIRST_PAGE}: add --all-pages for every target)" if more else None,
    )


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


def _environment_id(service: Client, ref: str) -> str:
    """The id of environment `ref`; an id is taken as it is, as users may not list environments."""
    if _resolve.is_uuid(ref):
        return ref
    try:
        return _resolve.environment(service, ref).id
    except PermissionDenied:
        raise PermissionDenied(
            f"only administrators may look environments up by name: give {ref!r} by its id"
        ) from None


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
