"""`zli policy`: the organisation's policies as YAML files, and why a request is allowed or denied.

Administrators keep policies in files (the format is in `_policy_yaml`) and `create`, `update`,
`import` and `export` them; `explain` shows the decision a request would get with every reason,
and `test` runs the `test_` rules of a custom Rego module on the service's own engine.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import click

from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as policy_pb
from mrzap.errors import InvalidArgument, NotFound

from . import _resolve
from ._client import Client
from ._context import client
from ._errors import EXIT_DENIED, EXIT_TESTS_FAILED, clear_errors
from ._format import duration_text, field_time, json_option, table, time_text, to_json
from ._policy_import import Action, Mode, apply_plan, plan_file
from ._policy_names import ServiceNames, policies, policy
from ._policy_yaml import EXAMPLES, VERBS, dump_policies, kind_of, parse_destination

__all__ = ["policy_group"]

#: Effects as `explain` shows them.
_EFFECTS = {
    policy_pb.DECISION_EFFECT_ALLOW: "allow",
    policy_pb.DECISION_EFFECT_DENY: "deny",
    policy_pb.DECISION_EFFECT_UNSPECIFIED: "n/a",
}


@click.group("policy")
def policy_group() -> None:
    """Policies: who may do what where (administrators change them).

    Policies are YAML files, one policy per document; `zli policy example KIND` shows the
    format of each kind. A request is denied unless some policy allows it and none denies it.
    """


@policy_group.command("example")
@click.argument("kind", type=click.Choice(list(EXAMPLES)), required=False)
def example_command(kind: str | None) -> None:
    """Print a commented example policy of KIND (default: one of every kind)."""
    shown = [EXAMPLES[kind]] if kind else list(EXAMPLES.values())
    click.echo("---\n".join(shown), nl=False)


def _read(file: str) -> str:
    """The text of FILE, or of standard input for "-"."""
    try:
        return sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise InvalidArgument(f"cannot read {file}: {reason}") from None


def _source(file: str) -> str:
    return "<stdin>" if file == "-" else file


# --- reading -----------------------------------------------------------------------------------


@policy_group.command("list")
@json_option
@click.pass_context
@clear_errors
def list_command(ctx: click.Context, as_json: bool) -> None:
    """List policies, by name."""
    found = list(policies(client(ctx)))
    if as_json:
        click.echo(to_json(found))
    elif not found:
        click.echo("No policies.")
    else:
        click.echo(
            table(
                ("NAME", "KIND", "VERSION", "UPDATED (UTC)", "ID", "DESCRIPTION"),
                (
                    (
                        p.name,
                        kind_of(p),
                        str(p.version),
                        field_time(p, "update_time", "-"),
                        p.id,
                        p.description,
                    )
                    for p in found
                ),
            )
        )


@policy_group.command("show")
@click.argument("policy_ref", metavar="POLICY")
@click.option("--version", type=click.IntRange(min=1), default=None, help="An earlier version.")
@json_option
@click.pass_context
@clear_errors
def show_command(ctx: click.Context, policy_ref: str, version: int | None, as_json: bool) -> None:
    """Show POLICY (name or id) as YAML, as `zli policy update` reads it."""
    service = client(ctx)
    found = policy(service, policy_ref, version or 0)
    if as_json:
        click.echo(to_json(found))
        return
    click.echo(
        f"# id {found.id}, version {found.version}, created {time_text(found.create_time)} UTC, "
        f"updated {time_text(found.update_time)} UTC"
    )
    click.echo(dump_policies([found], ServiceNames(service)), nl=False)


@policy_group.command("export")
@click.argument("policy_refs", metavar="[POLICY]...", nargs=-1)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file instead of standard output.",
)
@click.pass_context
@clear_errors
def export_command(ctx: click.Context, policy_refs: tuple[str, ...], output: Path | None) -> None:
    """Write every policy (or the POLICYs named) as a YAML file that `zli policy import` reads.

    Targets, environments and policies are written by name where they have one.
    """
    service = client(ctx)
    found = list(policies(service))
    if policy_refs:
        wanted = []
        for ref in policy_refs:
            match = next((p for p in found if ref in (p.id, p.name)), None)
            if match is None:
                raise NotFound(f"no policy {ref!r}: `zli policy list` shows them")
            wanted.append(match)
        found = wanted
    text = dump_policies(found, ServiceNames(service)) if found else ""
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise InvalidArgument(f"cannot write {output}: {error.strerror}") from None
    click.echo(f"Exported {len(found)} policies to {output}.", err=True)


# --- changing ----------------------------------------------------------------------------------


def _apply(service: Client, file: str, mode: Mode, dry_run: bool, replace: str = "") -> None:
    changes = plan_file(service, _read(file), _source(file), mode, replace)
    if not dry_run:
        apply_plan(service, changes, click.echo)
        return
    for change in changes:
        verb = {Action.CREATE: "create", Action.UPDATE: "update", Action.UNCHANGED: "leave"}
        click.echo(f"Would {verb[change.action]} policy {change.name!r}.")
    click.echo("Every policy is valid; nothing was changed (--dry-run).")


_dry_run = click.option(
    "--dry-run", is_flag=True, help="Check the file and say what would change, changing nothing."
)


@policy_group.command("create")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@_dry_run
@click.pass_context
@clear_errors
def create_command(ctx: click.Context, file: str, dry_run: bool) -> None:
    """Create the policies in FILE (YAML; "-" for standard input); none may exist yet.

    Every policy is checked before any is created.
    """
    _apply(client(ctx), file, Mode.CREATE, dry_run)


@policy_group.command("update")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--policy",
    "policy_ref",
    default="",
    metavar="POLICY",
    help="Replace this policy (name or id) with the file's one policy, renaming it if need be.",
)
@_dry_run
@click.pass_context
@clear_errors
def update_command(ctx: click.Context, file: str, policy_ref: str, dry_run: bool) -> None:
    """Update the policies in FILE (YAML), matched by name; each gets a new version.

    A policy's kind cannot change. Every policy is checked before any is changed.
    """
    service = client(ctx)
    replace = policy(service, policy_ref).id if policy_ref else ""
    _apply(service, file, Mode.UPDATE, dry_run, replace)


@policy_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@_dry_run
@click.pass_context
@clear_errors
def import_command(ctx: click.Context, file: str, dry_run: bool) -> None:
    """Create or update, by name, every policy in FILE (YAML, as `zli policy export` writes it).

    Every policy is checked before any is changed: a file with one mistake changes nothing.
    Policies not in the file are left alone.
    """
    _apply(client(ctx), file, Mode.IMPORT, dry_run)


@policy_group.command("delete")
@click.argument("policy_ref", metavar="POLICY")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@clear_errors
def delete_command(ctx: click.Context, policy_ref: str, yes: bool) -> None:
    """Delete POLICY (name or id); administrators only."""
    service = client(ctx)
    found = policy(service, policy_ref)
    if not yes:
        click.confirm(f"Delete policy {found.name!r} ({found.id})?", abort=True)
    service.call(service.policy.DeletePolicy, policy_pb.DeletePolicyRequest(policy_id=found.id))
    click.echo(f"Deleted policy {found.name!r} ({found.id}).")


# --- explaining and testing --------------------------------------------------------------------


def _target_id(service: Client, ref: str) -> str:
    """The id of the target named `ref`; an id is used as it is (users may not list targets)."""
    try:
        uuid.UUID(ref)
    except ValueError:
        return _resolve.target(service, ref).target.id
    return ref


def _principal(user: str) -> policy_pb.Principal:
    """The principal `--user` names: an email address, else a user id; empty for the caller."""
    if "@" in user:
        return policy_pb.Principal(subject=mrzap_pb2.Subject(email=user))
    return policy_pb.Principal(user_id=user)


@policy_group.command("explain")
@click.option("--user", default="", help="Whose request (email or user id); default: yours.")
@click.option("--target", "target_ref", required=True, help="The target (name or id).")
@click.option("--target-user", default="", help="The Unix, database or cluster user to act as.")
@click.option(
    "--verb",
    type=click.Choice(list(VERBS)),
    default="shell",
    show_default=True,
    help="What to do.",
)
@click.option("--destination", default="", metavar="HOST:PORT", help="For tunnels: where to.")
@click.option("--kube-group", "kube_groups", multiple=True, help="For kube: a group; repeatable.")
@json_option
@click.pass_context
@clear_errors
def explain_command(
    ctx: click.Context,
    user: str,
    target_ref: str,
    target_user: str,
    verb: str,
    destination: str,
    kube_groups: tuple[str, ...],
    as_json: bool,
) -> None:
    """Say whether a request would be allowed now, and every reason.

    Exits 0 when it would be allowed and 11 when it would be denied. Only administrators may
    explain another user's requests.
    """
    service = client(ctx)
    access = policy_pb.TargetAccess(
        target_id=_target_id(service, target_ref),
        verb=VERBS[verb],
        target_user=target_user,
        kube_groups=kube_groups,
    )
    if destination:
        try:
            access.destination.CopyFrom(parse_destination(destination))
        except ValueError as error:
            raise click.BadParameter(str(error), ctx, param_hint="--destination") from None
    request = policy_pb.ExplainAccessRequest(
        input=policy_pb.DecisionInput(principal=_principal(user), target_access=access)
    )
    decision = service.call(service.policy.ExplainAccess, request).decision
    allowed = decision.effect == policy_pb.DECISION_EFFECT_ALLOW
    if as_json:
        click.echo(to_json(decision))
    else:
        request_text = f"{verb} on {target_ref}" + (f" as {target_user}" if target_user else "")
        _show_decision(decision, f"{user or 'you'}: {request_text}")
    if not allowed:
        sys.exit(EXIT_DENIED)


def _show_decision(decision: policy_pb.Decision, request: str) -> None:
    allowed = decision.effect == policy_pb.DECISION_EFFECT_ALLOW
    click.echo(f"{'ALLOWED' if allowed else 'DENIED'}  {request}")
    click.echo(f"decision {decision.decision_id} at {time_text(decision.decide_time)} UTC")
    if allowed:
        longest = decision.max_session_duration.ToTimedelta().total_seconds()
        record = "output and input" if decision.record.input else "output"
        limit = duration_text(longest) if longest > 0 else "no limit"
        click.echo(f"longest session {limit}; recorded: {record}")
    click.echo("")
    if not decision.reasons:
        click.echo("No reasons given.")
        return
    click.echo(
        table(
            ("POLICY", "EFFECT", "REASON"),
            (
                (
                    r.policy_name or r.policy_id or "(built-in)",
                    _EFFECTS.get(r.effect, "n/a"),
                    r.message,
                )
                for r in decision.reasons
            ),
        )
    )


@policy_group.command("test")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.pass_context
@clear_errors
def test_command(ctx: click.Context, file: str) -> None:
    """Check the custom Rego module in FILE on the service's engine and run its `test_` rules.

    Exits 0 when every test passes, 12 when one fails and 8 when the module is not valid
    (with the engine's message). Administrators only.
    """
    service = client(ctx)
    name = Path(file).stem if file != "-" else "stdin"
    request = policy_pb.CheckPolicyRequest(
        policy=policy_pb.Policy(name=name, rego=policy_pb.RegoPolicy(module=_read(file)))
    )
    try:
        results = service.call(service.policy.CheckPolicy, request).test_results
    except InvalidArgument as error:
        raise InvalidArgument(f"{_source(file)}: {error.message}") from None
    if not results:
        click.echo(f"{_source(file)} is valid; it has no test_ rules.")
        return
    for result in results:
        verdict = "PASS" if result.passed else "FAIL"
        click.echo(f"{verdict}  {result.name}" + (f": {result.message}" if result.message else ""))
    failed = sum(1 for r in results if not r.passed)
    click.echo(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        sys.exit(EXIT_TESTS_FAILED)
