"""Validated, immutable configuration shared by the protocol core and the services.

Each dataclass validates itself on construction, so an object that exists is usable; invalid
values raise `InvalidArgument` with a message that names the field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from .errors import InvalidArgument

__all__ = [
    "DEFAULT_ALGORITHMS",
    "AgentLocalPolicy",
    "DestinationRule",
    "IdpConfig",
]

#: ID token algorithms accepted by default: asymmetric only (never `none`, never HMAC).
DEFAULT_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidArgument(message)


@dataclasses.dataclass(frozen=True)
class IdpConfig:
    """How to verify ID tokens of the organisation's identity provider (PROTOCOL.md section 3)."""

    issuer: str
    """The pinned issuer URL; `iss` must equal it exactly, and discovery is fetched from it."""

    client_id: str
    """The OIDC client id of zli; `aud` must contain it."""

    allowed_email_domains: frozenset[str] = frozenset()
    """If not empty, the token's verified email must be in one of these domains."""

    hosted_domain: str | None = None
    """If set, the token's `hd` claim (Google Workspace) must equal it."""

    tenant_id: str | None = None
    """If set, the token's `tid` claim (Entra ID) must equal it."""

    allowed_algorithms: frozenset[str] = DEFAULT_ALGORITHMS
    """JWS algorithms accepted for ID tokens."""

    max_session_age_s: float = 12 * 3600
    """Longest a login session lasts, counted from the first ID token's `iat`."""

    leeway_s: float = 60.0
    """Clock difference tolerated on `exp`, `iat` and `nbf`."""

    def __post_init__(self) -> None:
        url = urlsplit(self.issuer)
        _require(
            url.scheme in ("https", "http") and bool(url.netloc),
            f"issuer must be an http(s) URL, got {self.issuer!r}",
        )
        _require(
            url.scheme == "https" or _is_loopback(url.hostname or ""),
            "issuer must use https unless it is on a loopback address",
        )
        _require(bool(self.client_id), "client_id must not be empty")
        _require(bool(self.allowed_algorithms), "allowed_algorithms must not be empty")
        bad = self.allowed_algorithms & _FORBIDDEN_ALGORITHMS
        _require(not bad, f"algorithms {sorted(bad)} are never allowed for ID tokens")
        _require(self.max_session_age_s > 0, "max_session_age_s must be positive")
        _require(0 <= self.leeway_s <= 300, "leeway_s must be between 0 and 300")
        object.__setattr__(
            self, "allowed_email_domains", frozenset(d.lower() for d in self.allowed_email_domains)
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class DestinationRule:
    """A tunnel destination the agent allows: a host and an inclusive port range."""

    host: str
    """Host name or IP address, compared case-insensitively; `*` matches any host."""

    first_port: int
    """Lowest allowed port."""

    last_port: int
    """Highest allowed port."""

    def __post_init__(self) -> None:
        _require(bool(self.host), "destination host must not be empty")
        _require(
            1 <= self.first_port <= self.last_port <= 65535,
            f"port range {self.first_port}-{self.last_port} is not within 1-65535",
        )

    @classmethod
    def parse(cls, text: str) -> DestinationRule:
        """Parse `host:port` or `host:first-last`."""
        host, sep, ports = text.rpartition(":")
        _require(bool(sep) and bool(host), f"destination {text!r} is not host:port[-port]")
        first, _, last = ports.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise InvalidArgument(f"destination {text!r} has a bad port") from None
        return cls(host.strip("[]").lower(), low, high)

    def matches(self, host: str, port: int) -> bool:
        """Whether `host:port` is inside this rule."""
        return (self.host in ("*", host.lower())) and self.first_port <= port <= self.last_port


@dataclasses.dataclass(frozen=True)
class AgentLocalPolicy:
    """The agent's own limits, checked after the grant (PROTOCOL.md section 5, step 6)."""

    allowed_target_users: frozenset[str] = frozenset()
    """Unix users the agent may act as; `*` allows every user. Empty allows none."""

    allowed_destinations: tuple[DestinationRule, ...] = ()
    """Tunnel destinations the agent may connect to. Empty allows none."""

    def __post_init__(self) -> None:
        _require(all(self.allowed_target_users), "allowed target users must not be empty strings")

    @classmethod
    def from_strings(
        cls, target_users: Iterable[str], destinations: Iterable[str]
    ) -> AgentLocalPolicy:
        """Build from configuration text (`user`, and `host:port[-port]`)."""
        return cls(
            frozenset(target_users),
            tuple(DestinationRule.parse(d) for d in destinations),
        )

    def allows_user(self, user: str) -> bool:
        """Whether the agent may act as `user`."""
        return "*" in self.allowed_target_users or user in self.allowed_target_users

    def allows_destination(self, host: str, port: int) -> bool:
        """Whether the agent may open a tunnel to `host:port`."""
        return any(rule.matches(host, port) for rule in self.allowed_destinations)
