"""`zli logs`: search the audit log — the commands typed in recorded shells, and every event
(connections, policy decisions, commands, API calls, target changes), as a table or exported as
JSON lines for other tools.

You see the events of your own connections; administrators see the whole organisation's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import click
from google.protobuf import json_format

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.errors import InvalidArgument
from mrzap.keys import write_secret_file
from mrzap.timestamps import to_timestamp

from ._audit import audit, parse_when, stream, target_id, target_names, user_id
from ._client import Client
from ._context import client
from ._errors import clear_errors
from ._format import json_option, table, time_text
from ._listing import echo_list, pages

__all__ = ["event_line", "logs_group"]

#: Events shown without --all.
FIRST_PAGE = 100

#: Event kinds by the name zli shows and accepts.
KINDS: dict[str, audit_pb.EventKind.ValueType] = {
    "connection": audit_pb.EVENT_KIND_CONNECTION,
    "decision": audit_pb.EVENT_KIND_POLICY_DECISION,
    "command": audit_pb.EVENT_KIND_COMMAND,
    "api-call": audit_pb.EVENT_KIND_API_CALL,
    "target": audit_pb.EVENT_KIND_TARGET,
}
OUTCOMES: dict[str, audit_pb.EventOutcome.ValueType] = {
    "allowed": audit_pb.EVENT_OUTCOME_ALLOWED,
    "denied": audit_pb.EVENT_OUTCOME_DENIED,
}


#: Control characters (C0, DEL, C1): shown escaped in tables, never sent to the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_all_option = click.option(
    "--all", "every", is_flag=True, help=f"Every page (default: the newest {FIRST_PAGE})."
)


@dataclasses.dataclass(frozen=True)
class _Filters:
    """What both `logs` commands filter by, as typed."""

    search: str
    user: str
    target: str
    since: str
    until: str
    connection: str


def _filter_options(connection_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options both `logs` commands filter with, handed to the command as `filters`."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def with_filters(
            *args: object,
            search: str,
            user: str,
            target: str,
            since: str,
            until: str,
            connection: str,
            **kwargs: object,
        ) -> None:
            filters = _Filters(search, user, target, since, until, connection)
            command(*args, filters=filters, **kwargs)

        return _with_options(with_filters, connection_help)

    return decorate


def _with_options(command: Callable[..., None], connection_help: str) -> Callable[..., None]:
    for option in reversed(
        (
            click.option(
                "--search", default="", metavar="TEXT", help="Only events whose text contains this."
            ),
            click.option(
                "--user", default="", metavar="USER", help="Only this user's events (email or id)."
            ),
            click.option(
                "--target",
                default="",
                metavar="TARGET",
                help="Only events on this target (name or id).",
            ),
            click.option(
                "--since",
                default="",
                metavar="WHEN",
                help="Only from then on: a time ago (15m, 2h, 7d) or an ISO 8601 time (UTC).",
            ),
            click.option(
                "--until", default="", metavar="WHEN", help="Only before then (as --since)."
            ),
            click.option("--connection", default="", metavar="ID", help=connection_help),
        )
    ):
        command = option(command)
    return command


def _event_filter(
    service: Client,
    filters: _Filters,
    kinds: Iterable[audit_pb.EventKind.ValueType] = (),
    outcomes: Iterable[audit_pb.EventOutcome.ValueType] = (),
) -> audit_pb.EventFilter:
    """The EventFilter the options ask for, with names turned into ids."""
    # Times first: a mistyped time is refused before any call.
    start = parse_when(filters.since) if filters.since else None
    end = parse_when(filters.until) if filters.until else None
    if start is not None and end is not None and start >= end:
        raise InvalidArgument("--since must be before --until")
    chosen = audit_pb.EventFilter(
        kinds=list(kinds),
        outcomes=list(outcomes),
        text=filters.search,
        user_id=user_id(service, filters.user) if filters.user else "",
        target_id=target_id(service, filters.target) if filters.target else "",
        connection_id=filters.connection,
    )
    if start is not None:
        chosen.start_time.CopyFrom(to_timestamp(start))
    if end is not None:
        chosen.end_time.CopyFrom(to_timestamp(end))
    return chosen


def _events(
    service: Client, search: audit_pb.EventFilter, every: bool
) -> tuple[list[audit_pb.AuditEvent], bool]:
    """The matching events, newest first, and whether more pages were left unread."""
    request = audit_pb.ListEventsRequest(filter=search, page_size=FIRST_PAGE)

    def fetch(token: str) -> tuple[Sequence[audit_pb.AuditEvent], str]:
        request.page_token = token
        answer = service.call(audit(service).ListEvents, request)
        return answer.events, answer.next_page_token

    return pages(fetch, every)


@click.group("logs")
def logs_group() -> None:
    """The audit log: commands typed in shells, connections, decisions and API calls.

    You see the events of your own connections; administrators see the whole organisation's.
    """


@logs_group.command("commands")
@_filter_options("Only commands typed in this connection.")
@_all_option
@json_option
@click.pass_context
@clear_errors
def commands_command(ctx: click.Context, filters: _Filters, every: bool, as_json: bool) -> None:
    """The commands typed in recorded shells, newest first."""
    service = client(ctx)
    chosen = _event_filter(service, filters, kinds=[audit_pb.EVENT_KIND_COMMAND])
    events, more = _events(service, chosen, every)

    def render(found: Sequence[audit_pb.AuditEvent]) -> str:
        names = target_names(service)
        return table(
            ("TIME (UTC)", "USER", "TARGET", "AS", "COMMAND"),
            (
                (
                    time_text(e.time),
                    _who(e.actor),
                    names.get(e.command.target_id, e.command.target_id),
                    e.command.target_user,
                    _one_line(e.command.command),
                )
                for e in found
            ),
        )

    echo_list(
        events,
        as_json=as_json,
        empty="No commands.",
        render=render,
        more=f"(only the newest {FIRST_PAGE}: add --all for every command)" if more else None,
    )


@logs_group.command("events")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(list(KINDS)),
    help="Only events of this kind; repeatable.",
)
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    type=click.Choice(list(OUTCOMES)),
    help="Only events with this outcome; repeatable.",
)
@_filter_options("Only events about this connection.")
@_all_option
@click.option(
    "--export",
    "export_format",
    type=click.Choice(["jsonl"]),
    default=None,
    help="Export every matching event, oldest first, one JSON object per line.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --export: write to this file (mode 0600) instead of stdout.",
)
@json_option
@click.pass_context
@clear_errors
def events_command(
    ctx: click.Context,
    kinds: tuple[str, ...],
    outcomes: tuple[str, ...],
    filters: _Filters,
    every: bool,
    export_format: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Audit events, newest first; or --export jsonl for every one, oldest first."""
    if output is not None and export_format is None:
        raise click.UsageError("-o/--output goes with --export jsonl")
    service = client(ctx)
    chosen = _event_filter(
        service,
        filters,
        kinds=[KINDS[kind] for kind in kinds],
        outcomes=[OUTCOMES[outcome] for outcome in outcomes],
    )
    if export_format is not None:
        _export(service, chosen, output)
        return
    events, more = _events(service, chosen, every)

    def render(found: Sequence[audit_pb.AuditEvent]) -> str:
        names = target_names(service)
        return table(
            ("TIME (UTC)", "KIND", "OUTCOME", "WHO", "WHAT"),
            (
                (
                    time_text(e.time),
                    _name(KINDS, e.kind),
                    _name(OUTCOMES, e.outcome),
                    _who(e.actor),
                    _summary(e, names),
                )
                for e in found
            ),
        )

    echo_list(
        events,
        as_json=as_json,
        empty="No events.",
        render=render,
        more=f"(only the newest {FIRST_PAGE}: add --all for every event)" if more else None,
    )


def event_line(event: audit_pb.AuditEvent) -> str:
    """One event as one line of JSON, with the proto field names (the --export jsonl format)."""
    document = json_format.MessageToDict(event, preserving_proto_field_name=True)
    return json.dumps(document, sort_keys=True, ensure_ascii=False)


def _export(service: Client, chosen: audit_pb.EventFilter, output: Path | None) -> None:
    request = audit_pb.ExportEventsRequest(filter=chosen)
    frames = stream(service, audit(service).ExportEvents, request)
    lines = (event_line(frame.event) for frame in frames if frame.HasField("event"))
    if output is None:
        _write_lines(lines, sys.stdout)
        return
    # Gather first: a failed export must not leave a file that looks whole.
    text = "".join(line + "\n" for line in lines)
    write_secret_file(output, text.encode())
    click.echo(f"Exported {text.count(chr(10))} events to {output}.", err=True)


def _write_lines(lines: Iterator[str], out: IO[str]) -> None:
    for line in lines:
        out.write(line + "\n")
    out.flush()


def _name(names: Mapping[str, int], value: int) -> str:
    return next((name for name, known in names.items() if known == value), "-")


def _who(actor: audit_pb.Actor) -> str:
    if actor.subject.email:
        return actor.subject.email
    if actor.api_key_id:
        return f"api-key:{actor.api_key_id}"
    if actor.user_id:
        return actor.user_id
    return f"agent:{actor.target_id}" if actor.target_id else "-"


def _one_line(text: str) -> str:
    """Text for one table cell: control characters a command may hold shown, not obeyed."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def _summary(event: audit_pb.AuditEvent, names: dict[str, str]) -> str:
    """What an event is about, in a few words."""
    which = event.WhichOneof("details")
    text = ""
    if which == "connection":
        c = event.connection
        kind = audit_pb.ConnectionEventType.Name(c.type).removeprefix("CONNECTION_EVENT_TYPE_")
        verb = mrzap_pb2.Verb.Name(c.verb).removeprefix("VERB_").lower()
        text = f"{kind.lower()} {verb} {c.target_user}@{names.get(c.target_id, c.target_id)}"
        text += f" connection {c.connection_id}"
        if c.reject_code:
            text += f" ({mrzap_pb2.ReasonCode.Name(c.reject_code)})"
    elif which == "policy_decision":
        text = f"decision {event.policy_decision.decision_id}"
        if event.policy_decision.grant_id:
            text += f", grant {event.policy_decision.grant_id}"
    elif which == "command":
        typed = event.command
        target = names.get(typed.target_id, typed.target_id)
        text = f"{typed.target_user}@{target}: {_one_line(typed.command)}"
    elif which == "api_call":
        text = f"{event.api_call.method} (status {event.api_call.status_code})"
    elif which == "target":
        text = f"target {names.get(event.target.target_id, event.target.target_id)}: "
        text += event.target.message
    reasons = "; ".join(r.message for r in event.reasons if r.message)
    return f"{text} — {reasons}" if reasons else text
