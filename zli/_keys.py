"""`zli keys`: registration keys (for agents) and API keys (for service accounts).

Both kinds of secret are shown once, when created or rotated; the service keeps only a hash.
"""

from __future__ import annotations

import shlex

import click

from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.registry.v1 import registry_service_pb2 as registry_pb

from . import _resolve
from ._context import client
from ._errors import clear_errors
from ._format import (
    duration_message,
    duration_option,
    field_time,
    json_option,
    table,
    time_text,
    to_json,
)

__all__ = ["keys_group"]

_SHOWN_ONCE = "This secret is shown only this once: store it somewhere safe now."


@click.group("keys")
def keys_group() -> None:
    """Registration keys and API keys (administrators only)."""


@keys_group.group("registration")
def registration_group() -> None:
    """Registration keys let machines register agents in one environment."""


@keys_group.group("api")
def api_group() -> None:
    """API keys let scripts and CI call the service without logging in ($MRZAP_API_KEY)."""


def _expiry(key: auth_pb.ApiKey | registry_pb.RegistrationKey) -> str:
    expiry = field_time(key, "expire_time")
    return expiry if expiry == "never" else expiry + " UTC"


def _show_secret(summary: str, secret: str, after: str = "") -> None:
    click.echo(f"{summary}\n\n  {secret}\n")
    click.echo(_SHOWN_ONCE + (f"\n{after}" if after else ""))


@registration_group.command("create")
@click.argument("name")
@click.option("--env", default="", help="The environment its targets join (name or id).")
@duration_option("--ttl", help="How long the key works, e.g. 30d (default: until revoked).")
@json_option
@click.pass_context
@clear_errors
def registration_create(
    ctx: click.Context, name: str, env: str, ttl: int | None, as_json: bool
) -> None:
    """Create a registration key called NAME; prints its secret once."""
    service = client(ctx)
    request = registry_pb.CreateRegistrationKeyRequest(name=name)
    if env:
        request.environment_id = _resolve.environment(service, env).id
    if ttl is not None:
        request.ttl.CopyFrom(duration_message(ttl))
    answer = service.call(service.registry.CreateRegistrationKey, request)
    key = answer.registration_key
    if as_json:
        click.echo(to_json({"registration_key": key, "secret": answer.secret}))
        return
    _show_secret(
        f"Created registration key {key.name!r} ({key.id}); expires {_expiry(key)}.",
        answer.secret,
        "Agents use it with `zli agent install-command --registration-key` or "
        "`mrzap-agent register`.",
    )


@registration_group.command("list")
@json_option
@click.pass_context
@clear_errors
def registration_list(ctx: click.Context, as_json: bool) -> None:
    """List registration keys that have not been revoked."""
    service = client(ctx)
    found = list(_resolve.registration_keys(service))
    if as_json:
        click.echo(to_json(found))
        return
    if not found:
        click.echo("No registration keys.")
        return
    env_names = _resolve.environment_names(service)
    click.echo(
        table(
            ("NAME", "ENVIRONMENT", "CREATED (UTC)", "EXPIRES", "LAST USED", "ID"),
            (
                (
                    key.name,
                    env_names.get(key.environment_id, key.environment_id),
                    time_text(key.create_time),
                    field_time(key, "expire_time"),
                    field_time(key, "last_use_time"),
                    key.id,
                )
                for key in found
            ),
        )
    )


@registration_group.command("rotate")
@click.argument("key")
@json_option
@click.pass_context
@clear_errors
def registration_rotate(ctx: click.Context, key: str, as_json: bool) -> None:
    """Give KEY (name or id) a new secret; the old one stops working at once."""
    service = client(ctx)
    request = registry_pb.RotateRegistrationKeyRequest(
        registration_key_id=_resolve.registration_key_id(service, key)
    )
    answer = service.call(service.registry.RotateRegistrationKey, request)
    rotated = answer.registration_key
    if as_json:
        click.echo(to_json({"registration_key": rotated, "secret": answer.secret}))
        return
    _show_secret(
        f"Rotated registration key {rotated.name!r} ({rotated.id}); "
        "the old secret no longer works.",
        answer.secret,
    )


@registration_group.command("revoke")
@click.argument("key")
@click.pass_context
@clear_errors
def registration_revoke(ctx: click.Context, key: str) -> None:
    """Make KEY (name or id) unusable at once; targets it registered keep working."""
    service = client(ctx)
    key_id = _resolve.registration_key_id(service, key)
    request = registry_pb.RevokeRegistrationKeyRequest(registration_key_id=key_id)
    service.call(service.registry.RevokeRegistrationKey, request)
    click.echo(f"Revoked registration key {key_id}.")


@api_group.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["user", "admin"]),
    default="user",
    show_default=True,
    help="The rights of calls made with the key.",
)
@duration_option("--ttl", help="How long the key works, e.g. 90d (default: until revoked).")
@json_option
@click.pass_context
@clear_errors
def api_create(ctx: click.Context, name: str, role: str, ttl: int | None, as_json: bool) -> None:
    """Create an API key called NAME for a service account; prints its secret once.

    Calls made with it need no login and no MFA: keep it as safe as a password, give it the
    smallest role and a lifetime, and revoke it when it is no longer needed.
    """
    service = client(ctx)
    request = auth_pb.CreateApiKeyRequest(name=name, admin=role == "admin")
    if ttl is not None:
        request.ttl.CopyFrom(duration_message(ttl))
    answer = service.call(service.auth.CreateApiKey, request)
    key = answer.api_key
    if as_json:
        click.echo(to_json({"api_key": key, "secret": answer.secret}))
        return
    _show_secret(
        f"Created API key {key.name!r} ({key.id}), role {role}; expires {_expiry(key)}.",
        answer.secret,
        "Use it: MRZAP_API_KEY=<the secret> "
        + shlex.join(
            [f"MRZAP_SERVER={service.server}"]
            + ([f"MRZAP_CA_FILE={service.ca_file}"] if service.ca_file else [])
        )
        + " zli ...",
    )


@api_group.command("list")
@json_option
@click.pass_context
@clear_errors
def api_list(ctx: click.Context, as_json: bool) -> None:
    """List API keys that have not been revoked."""
    found = list(_resolve.api_keys(client(ctx)))
    if as_json:
        click.echo(to_json(found))
        return
    if not found:
        click.echo("No API keys.")
        return
    click.echo(
        table(
            ("NAME", "ROLE", "CREATED (UTC)", "EXPIRES", "LAST USED", "ID"),
            (
                (
                    key.name,
                    "admin" if key.admin else "user",
                    time_text(key.create_time),
                    field_time(key, "expire_time"),
                    field_time(key, "last_use_time"),
                    key.id,
                )
                for key in found
            ),
        )
    )


@api_group.command("revoke")
@click.argument("key")
@click.pass_context
@clear_errors
def api_revoke(ctx: click.Context, key: str) -> None:
    """Make KEY (name or id) unusable at once."""
    service = client(ctx)
    key_id = _resolve.api_key_id(service, key)
    service.call(service.auth.RevokeApiKey, auth_pb.RevokeApiKeyRequest(api_key_id=key_id))
    click.echo(f"Revoked API key {key_id}.")
