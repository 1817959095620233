"""The `mrzapd` configuration file (TOML), validated into frozen dataclasses.

Example (every key is optional except `[idp]` `issuer` and `client_id`):

    [server]
    listen = "127.0.0.1:8443"          # host:port the gRPC server binds
    tls_hosts = ["127.0.0.1", "localhost"]  # names on the generated server certificate

    [storage]
    database = "sqlite:////var/lib/mrzap/mrzap.db"   # or postgresql://user@host/db

    [org]
    mfa_required = true
    mfa_window = "12h"
    max_session_age = "12h"

    [idp]
    issuer = "https://example.okta.com"
    client_id = "0oa..."
    client_secret = ""                  # only for IdPs that do not allow public clients
    scopes = ["openid", "email", "profile", "offline_access"]
    allowed_email_domains = ["example.com"]
    hosted_domain = ""                  # Google Workspace `hd`
    tenant_id = ""                      # Entra ID `tid`
    groups_claim = "groups"

    [admins]
    emails = ["alice@example.com"]
    groups = ["mrzap-admins"]

    [broker]
    region = ""                         # the region targets connected here are pinned to
    keepalive_interval = "20s"          # how often an idle agent stream exchanges keepalives

    [policy]
    engine = "embedded"                 # "embedded" (regopy), "opa" (the real OPA engine, needs
                                        # opa-golib-python-bindings) or "opa+http://HOST:PORT"

    [registry]
    activation_token_lifetime = "10m"   # how long an activation token can register a target
    offline_timeout = "60s"             # an ONLINE target silent this long becomes OFFLINE
    offline_cleanup_timeout = "24h"     # OFFLINE this long: TERMINATED (environments may differ)
    sweep_interval = "5s"               # how often those time-based transitions are applied
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from audit import AuditConfig
from auth import AuthConfig, OrgControls
from mrzap.config import IdpConfig
from mrzap.errors import InvalidArgument
from mrzap.storage import sqlite_url
from registry import RegistryConfig

__all__ = [
    "BrokerSettings",
    "PolicySettings",
    "ServerConfig",
    "ServiceConfig",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object, name: str) -> float:
    """Seconds from a number or a string like "90s", "15m", "12h", "7d"."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise InvalidArgument(f"{name} must be a positive duration like 90s, 15m or 12h")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Where and how the gRPC server listens."""

    host: str = "127.0.0.1"
    """The address to bind."""

    port: int = 8443
    """The port to bind; 0 picks a free one."""

    tls_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    """The names the generated server certificate is valid for."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"server port {self.port} is not within 0-65535")
        if not self.tls_hosts:
            raise InvalidArgument("server tls_hosts must name at least one host")


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    """The `[broker]` section: how this process holds agents' control streams."""

    region: str = ""
    """The region of this broker; targets connected to it are pinned to it."""

    keepalive_interval_s: float = 20.0
    """How often each side of an idle control stream sends a keepalive."""

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> BrokerSettings:
        """Validate the `[broker]` table."""
        unknown = set(table) - {"region", "keepalive_interval"}
        if unknown:
            raise InvalidArgument(f"unknown keys in [broker]: {sorted(unknown)}")
        region = table.get("region", "")
        if not isinstance(region, str):
            raise InvalidArgument("broker.region must be a string")
        return cls(
            region=region,
            keepalive_interval_s=parse_duration(
                table.get("keepalive_interval", "20s"), "broker.keepalive_interval"
            ),
        )


_ENGINE_SPEC = re.compile(r"^(embedded|opa|opa\+https?://[^\s/]+(:\d+)?/?)$")


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    """The `[policy]` section: which engine decides."""

    engine: str = "embedded"
    """`embedded` (regopy, in process), `opa` (the real OPA engine, in process) or
    `opa+http://HOST:PORT` (an OPA server)."""

    def __post_init__(self) -> None:
        if not _ENGINE_SPEC.match(self.engine):
            raise InvalidArgument(
                f"policy engine {self.engine!r} is not one of embedded, opa, opa+http://HOST:PORT"
            )

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> PolicySettings:
        """Validate the `[policy]` table."""
        unknown = set(table) - {"engine"}
        if unknown:
            raise InvalidArgument(f"unknown keys in [policy]: {sorted(unknown)}")
        engine = table.get("engine", "embedded")
        if not isinstance(engine, str):
            raise InvalidArgument("policy.engine must be a string")
        return cls(engine=engine)


_REGISTRY_KEYS = {
    "activation_token_lifetime": "activation_token_lifetime_s",
    "offline_timeout": "offline_timeout_s",
    "offline_cleanup_timeout": "offline_cleanup_timeout_s",
    "sweep_interval": "sweep_interval_s",
}


def _registry_config(table: dict[str, Any]) -> RegistryConfig:
    """Validate the `[registry]` table; absent keys keep their defaults."""
    unknown = set(table) - set(_REGISTRY_KEYS)
    if unknown:
        raise InvalidArgument(f"unknown keys in [registry]: {sorted(unknown)}")
    return RegistryConfig(
        **{
            _REGISTRY_KEYS[key]: parse_duration(value, f"registry.{key}")
            for key, value in table.items()
        }
    )


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """Everything `mrzapd` reads from its configuration file."""

    data_dir: Path
    """Where keys, TLS material and the SQLite database live."""

    server: ServerConfig
    """The gRPC listener."""

    database: str
    """The database URL."""

    auth: AuthConfig
    """The identity provider, administrators and organisation controls."""

    broker: BrokerSettings = BrokerSettings()
    """The broker role: region and keepalives of agents' control streams."""

    registry: RegistryConfig = dataclasses.field(default_factory=RegistryConfig)
    """The registry role: activation token lifetime and the lifecycle's timeouts."""

    policy: PolicySettings = PolicySettings()
    """The policy role: the engine that decides."""

    audit: AuditConfig = dataclasses.field(default_factory=AuditConfig)
    """The audit role: how long session recordings are kept."""

    @classmethod
    def from_toml(cls, path: Path, data_dir: Path) -> ServiceConfig:
        """Read and validate a configuration file; errors name the file and the key."""
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise InvalidArgument(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise InvalidArgument(f"{path}: {error}") from None
        try:
            return cls.from_dict(raw, data_dir)
        except InvalidArgument as error:
            raise InvalidArgument(f"{path}: {error.message}") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], data_dir: Path) -> ServiceConfig:
        """Validate configuration given as a dictionary (the parsed TOML)."""
        known = {
            "server",
            "storage",
            "org",
            "idp",
            "admins",
            "broker",
            "registry",
            "policy",
            "audit",
        }
        unknown = set(raw) - known
        if unknown:
            raise InvalidArgument(f"unknown sections {sorted(unknown)}; known: {sorted(known)}")
        server = _table(raw, "server")
        storage = _table(raw, "storage")
        org = _table(raw, "org")
        idp = _table(raw, "idp")
        admins = _table(raw, "admins")
        host, _, port = str(server.get("listen", "127.0.0.1:8443")).rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument("server.listen must be host:port")
        for key in ("issuer", "client_id"):
            if not isinstance(idp.get(key), str) or not idp[key]:
                raise InvalidArgument(f"idp.{key} is required")
        idp_config = IdpConfig(
            issuer=idp["issuer"],
            client_id=idp["client_id"],
            allowed_email_domains=frozenset(_strings(idp, "allowed_email_domains", "idp")),
            hosted_domain=idp.get("hosted_domain") or None,
            tenant_id=idp.get("tenant_id") or None,
            max_session_age_s=parse_duration(
                org.get("max_session_age", "12h"), "org.max_session_age"
            ),
        )
        auth = AuthConfig(
            idp=idp_config,
            scopes=tuple(
                _strings(idp, "scopes", "idp") or ("openid", "email", "profile", "offline_access")
            ),
            client_secret=str(idp.get("client_secret", "")),
            admin_emails=frozenset(_strings(admins, "emails", "admins")),
            admin_groups=frozenset(_strings(admins, "groups", "admins")),
            controls=OrgControls(
                mfa_required=bool(org.get("mfa_required", True)),
                mfa_window_s=parse_duration(org.get("mfa_window", "12h"), "org.mfa_window"),
            ),
            groups_claim=str(idp.get("groups_claim", "groups")),
        )
        return cls(
            data_dir=data_dir,
            server=ServerConfig(
                host=host.strip("[]"),
                port=int(port),
                tls_hosts=tuple(_strings(server, "tls_hosts", "server"))
                or ("127.0.0.1", "localhost"),
            ),
            database=str(storage.get("database") or sqlite_url(data_dir / "mrzap.db")),
            auth=auth,
            broker=BrokerSettings.from_table(_table(raw, "broker")),
            registry=_registry_config(_table(raw, "registry")),
            policy=PolicySettings.from_table(_table(raw, "policy")),
            audit=_audit_config(_table(raw, "audit")),
        )


def _audit_config(table: dict[str, Any]) -> AuditConfig:
    """Validate the `[audit]` table: `recording_retention` and `purge_interval` durations."""
    unknown = set(table) - {"recording_retention", "purge_interval"}
    if unknown:
        raise InvalidArgument(f"unknown keys in [audit]: {sorted(unknown)}")
    return AuditConfig(
        recording_retention_s=parse_duration(
            table.get("recording_retention", "90d"), "audit.recording_retention"
        ),
        purge_interval_s=parse_duration(table.get("purge_interval", "1h"), "audit.purge_interval"),
    )


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"[{name}] must be a table")
    return value


def _strings(table: dict[str, Any], key: str, section: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{section}.{key} must be a list of strings")
    return value
