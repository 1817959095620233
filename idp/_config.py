"""The development IdP's configuration, read from a TOML file.

Example (every key is optional except the clients and users themselves)::

    [server]
    host = "127.0.0.1"          # loopback only: the IdP serves plain http
    port = 0                    # 0 picks a free port
    data_dir = "idp-data"       # relative to this file; holds the signing key

    [tokens]
    id_token_lifetime_seconds = 600
    access_token_lifetime_seconds = 600
    refresh_token_lifetime_seconds = 43200
    code_lifetime_seconds = 60

    [[clients]]
    client_id = "zli"
    redirect_uris = ["http://127.0.0.1/callback"]   # any port on loopback (RFC 8252 §7.3)

    [[clients]]
    client_id = "web"
    redirect_uris = ["https://mrzap.example/oidc/callback"]
    client_secret_hash = "scrypt$ln=14,r=8,p=1$…"   # a confidential client

    [[users]]
    username = "alice"
    password_hash = "scrypt$ln=14,r=8,p=1$…"        # `python -m idp hash-password`
    email = "alice@example.com"
    email_verified = true
    name = "Alice Example"
    groups = ["admins", "developers"]
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mrzap.errors import InvalidArgument

from ._passwords import check_password_hash

__all__ = ["ClientConfig", "DevIdpConfig", "DevIdpConfigError", "UserConfig", "is_loopback_host"]

_T = TypeVar("_T")
_KIND_NAMES: Mapping[type, str] = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    dict: "a table",
    list: "an array",
}


class DevIdpConfigError(InvalidArgument):
    """The IdP configuration file is missing, unreadable or invalid; the message says where."""


def is_loopback_host(host: str) -> bool:
    """Whether `host` names the loopback interface (`localhost`, 127.0.0.0/8 or ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class UserConfig:
    """One user who can log in on the IdP's form."""

    username: str
    """The login name typed into the form."""
    password_hash: str
    """The scrypt hash of the password (see `hash_password`); never the password itself."""
    sub: str
    """The `sub` claim: stable subject identifier; defaults to the username."""
    email: str
    """The `email` claim."""
    email_verified: bool
    """The `email_verified` claim; verifiers only trust the email when this is true."""
    name: str
    """The `name` claim; defaults to the username."""
    groups: tuple[str, ...]
    """The `groups` claim, used by mrzap policies."""


@dataclass(frozen=True)
class ClientConfig:
    """One registered OIDC client (relying party)."""

    client_id: str
    """The client identifier; it becomes the ID token's `aud` and `azp`."""
    redirect_uris: tuple[str, ...]
    """Registered redirect URIs. For `http://127.0.0.1/…` and `http://[::1]/…` any port matches
    (RFC 8252 §7.3); every other URI must match exactly."""
    client_secret_hash: str | None = None
    """Scrypt hash of the client secret for a confidential client; None for a public client,
    which authenticates with PKCE alone."""

    @property
    def is_public(self) -> bool:
        """Whether this client has no secret (a native app such as zli)."""
        return self.client_secret_hash is None


@dataclass(frozen=True)
class DevIdpConfig:
    """Everything the development IdP needs, validated. Build it with `DevIdpConfig.from_toml`."""

    clients: tuple[ClientConfig, ...]
    """The registered clients; client ids are unique."""
    users: tuple[UserConfig, ...]
    """The users who can log in; usernames are unique."""
    host: str = "127.0.0.1"
    """The loopback address to listen on; the issuer is `http://HOST:PORT`."""
    port: int = 0
    """The TCP port to listen on; 0 picks a free one."""
    data_dir: Path | None = None
    """Where the signing key lives (absolute, or None when only the command line gives it)."""
    id_token_lifetime_seconds: int = 600
    """How long an ID token is valid."""
    access_token_lifetime_seconds: int = 600
    """How long an access token (for `/userinfo`) is valid."""
    refresh_token_lifetime_seconds: int = 43200
    """How long a login can be refreshed, counted from the login (rotation does not extend it)."""
    code_lifetime_seconds: int = 60
    """How long an authorization code can be exchanged."""
    _clients_by_id: Mapping[str, ClientConfig] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _users_by_name: Mapping[str, UserConfig] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_clients_by_id", {c.client_id: c for c in self.clients})
        object.__setattr__(self, "_users_by_name", {u.username: u for u in self.users})

    def client(self, client_id: str) -> ClientConfig | None:
        """The client registered as `client_id`, if any."""
        return self._clients_by_id.get(client_id)

    def user(self, username: str) -> UserConfig | None:
        """The user called `username`, if any."""
        return self._users_by_name.get(username)

    @classmethod
    def from_toml(cls, path: Path) -> DevIdpConfig:
        """Read and validate the TOML file at `path`; `DevIdpConfigError` says what is wrong."""
        try:
            with path.open("rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise DevIdpConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise DevIdpConfigError(f"{path}: not valid TOML: {exc}") from exc
        return _Reader(str(path), path.resolve().parent).config(raw)


class _Reader:
    """Turns the parsed TOML into an `DevIdpConfig`, naming the file and key in every error."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self._source = source
        self._base_dir = base_dir

    def _error(self, where: str, message: str) -> DevIdpConfigError:
        return DevIdpConfigError(f"{self._source}: {where}: {message}")

    def _check_keys(self, table: Mapping[str, Any], where: str, known: set[str]) -> None:
        unknown = sorted(set(table) - known)
        if unknown:
            raise self._error(where or "top level", f"unknown key(s): {', '.join(unknown)}")

    def _get(
        self, table: Mapping[str, Any], key: str, where: str, kind: type[_T], default: _T | None
    ) -> _T:
        value = table.get(key, default)
        name = f"{where}.{key}" if where else key
        if value is None:
            raise self._error(name, "is required")
        # bool is an int in Python; a boolean where a number belongs is a mistake.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._error(name, f"must be {_KIND_NAMES.get(kind, kind.__name__)}")
        return value

    def _text(
        self, table: Mapping[str, Any], key: str, where: str, default: str | None = None
    ) -> str:
        value = self._get(table, key, where, str, default)
        if not value.strip():
            raise self._error(f"{where}.{key}", "must not be empty")
        return value

    def _seconds(self, table: Mapping[str, Any], key: str, default: int) -> int:
        value = self._get(table, key, "tokens", int, default)
        if not 1 <= value <= 30 * 24 * 3600:
            raise self._error(f"tokens.{key}", "must be between 1 second and 30 days")
        return value

    def _table(self, raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        return self._get(raw, key, "", dict, {})

    def _array_of_tables(self, raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
        items = self._get(raw, key, "", list, [])
        if not all(isinstance(item, dict) for item in items):
            raise self._error(key, f"must be an array of tables ([[{key}]])")
        return items

    def config(self, raw: Mapping[str, Any]) -> DevIdpConfig:
        self._check_keys(raw, "", {"server", "tokens", "clients", "users"})
        server = self._table(raw, "server")
        self._check_keys(server, "server", {"host", "port", "data_dir"})
        host = self._text(server, "host", "server", "127.0.0.1")
        if not is_loopback_host(host):
            raise self._error(
                "server.host", "must be a loopback address: the development IdP serves plain http"
            )
        port = self._get(server, "port", "server", int, 0)
        if not 0 <= port <= 65535:
            raise self._error("server.port", "must be between 0 and 65535")
        data_dir = None
        if "data_dir" in server:
            data_dir = self._base_dir / Path(self._text(server, "data_dir", "server"))

        tokens = self._table(raw, "tokens")
        lifetimes = {
            "id_token_lifetime_seconds": 600,
            "access_token_lifetime_seconds": 600,
            "refresh_token_lifetime_seconds": 43200,
            "code_lifetime_seconds": 60,
        }
        self._check_keys(tokens, "tokens", set(lifetimes))
        seconds = {key: self._seconds(tokens, key, default) for key, default in lifetimes.items()}

        clients = tuple(
            self._client(item, f"clients[{i}]")
            for i, item in enumerate(self._array_of_tables(raw, "clients"))
        )
        users = tuple(
            self._user(item, f"users[{i}]")
            for i, item in enumerate(self._array_of_tables(raw, "users"))
        )
        if not clients:
            raise self._error("clients", "register at least one client ([[clients]])")
        if not users:
            raise self._error("users", "add at least one user ([[users]])")
        self._unique([c.client_id for c in clients], "clients", "client_id")
        self._unique([u.username for u in users], "users", "username")
        self._unique([u.sub for u in users], "users", "sub")
        return DevIdpConfig(
            clients=clients,
            users=users,
            host=host,
            port=port,
            data_dir=data_dir,
            **seconds,
        )

    def _unique(self, values: list[str], where: str, key: str) -> None:
        seen: set[str] = set()
        for value in values:
            if value in seen:
                raise self._error(where, f"{key} {value!r} appears more than once")
            seen.add(value)

    def _hash(self, table: Mapping[str, Any], key: str, where: str) -> str:
        value = self._text(table, key, where)
        try:
            check_password_hash(value)
        except ValueError as exc:
            raise self._error(f"{where}.{key}", str(exc)) from exc
        return value

    def _client(self, table: Mapping[str, Any], where: str) -> ClientConfig:
        self._check_keys(table, where, {"client_id", "redirect_uris", "client_secret_hash"})
        client_id = self._text(table, "client_id", where)
        uris = self._get(table, "redirect_uris", where, list, None)
        if not uris or not all(isinstance(uri, str) for uri in uris):
            raise self._error(f"{where}.redirect_uris", "must be a non-empty list of strings")
        for uri in uris:
            self._check_redirect_uri(uri, f"{where}.redirect_uris")
        secret_hash = None
        if "client_secret_hash" in table:
            secret_hash = self._hash(table, "client_secret_hash", where)
        return ClientConfig(client_id, tuple(uris), secret_hash)

    def _check_redirect_uri(self, uri: str, where: str) -> None:
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018 -- parsing the port is the check
        except ValueError as exc:
            raise self._error(where, f"{uri!r} is not a valid URI") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self._error(where, f"{uri!r} must be an absolute http(s) URI")
        if parts.fragment or "#" in uri:
            raise self._error(where, f"{uri!r} must not have a fragment (RFC 6749 §3.1.2)")
        if parts.username is not None or parts.password is not None:
            raise self._error(where, f"{uri!r} must not carry credentials")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise self._error(where, f"{uri!r}: plain http is only allowed for loopback hosts")

    def _user(self, table: Mapping[str, Any], where: str) -> UserConfig:
        known = {"username", "password_hash", "sub", "email", "email_verified", "name", "groups"}
        self._check_keys(table, where, known)
        username = self._text(table, "username", where)
        email = self._text(table, "email", where)
        if "@" not in email.strip("@"):
            raise self._error(f"{where}.email", f"{email!r} is not an email address")
        groups = self._get(table, "groups", where, list, [])
        if not all(isinstance(g, str) and g for g in groups):
            raise self._error(f"{where}.groups", "must be a list of non-empty strings")
        return UserConfig(
            username=username,
            password_hash=self._hash(table, "password_hash", where),
            sub=self._text(table, "sub", where, username),
            email=email,
            email_verified=self._get(table, "email_verified", where, bool, False),
            name=self._text(table, "name", where, username),
            groups=tuple(groups),
        )
