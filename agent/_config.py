"""The agent's configuration directory: its key, the CA it trusts and `agent.toml`.

`mrzap-agent register` writes it once; `mrzap-agent run` reads it. Every file is 0600 in a 0700
directory: the key is the target's identity, and the pinned grant keys and identity provider are
what the agent's own checks rest on (PROTOCOL.md sections 1, 3, 4), so nobody else may change them.

    server = "mrzap.example.com:8443"
    target_id = "…"                 # the target's UUID
    org_id = "…"
    name = "web-1"
    ca_file = "ca.crt"              # relative to the directory; "" trusts the system's roots

    [[grant_keys]]                  # the service keys grants must be signed with
    key_id = "…"
    public_key = "base64 of the raw 32-byte Ed25519 key"

    [idp]                           # the identity provider PK tokens must come from
    issuer = "https://example.okta.com"
    client_id = "0oa…"
    allowed_email_domains = ["example.com"]
    hosted_domain = ""
    tenant_id = ""
    max_session_age_s = 43200.0
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrzap.config import IdpConfig
from mrzap.errors import FailedPrecondition, InvalidArgument, MrzapError
from mrzap.keys import load_private_key, save_private_key, write_secret_file

__all__ = [
    "DEFAULT_CONFIG_DIR",
    "AgentConfig",
    "AgentFiles",
    "GrantKeyPin",
    "default_config_dir",
]

DEFAULT_CONFIG_DIR = Path("/etc/mrzap-agent")
_CONFIG_DIR_ENV = "MRZAP_AGENT_CONFIG_DIR"


def default_config_dir() -> Path:
    """$MRZAP_AGENT_CONFIG_DIR, else /etc/mrzap-agent."""
    return Path(os.environ.get(_CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR)


@dataclasses.dataclass(frozen=True)
class GrantKeyPin:
    """A service grant key the agent accepts grants from."""

    key_id: str
    """The key id grants name."""

    public_key: bytes
    """The raw 32-byte Ed25519 public key."""


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """What the agent learned at registration."""

    server: str
    """The service's host:port, which the agent dials."""

    target_id: str
    """The target's id; the agent authenticates as it."""

    org_id: str
    """The organisation; grants must name it."""

    name: str
    """The target's name at registration (for messages only)."""

    grant_keys: tuple[GrantKeyPin, ...]
    """The pinned service grant keys."""

    idp: IdpConfig
    """The pinned identity provider."""

    ca_pem: bytes | None
    """The CA certificate the agent trusts for the service; None trusts the system's roots."""

    def __post_init__(self) -> None:
        if not self.server or not self.target_id:
            raise InvalidArgument("server and target_id are required")
        for pin in self.grant_keys:
            if len(pin.public_key) != 32:
                raise InvalidArgument(f"grant key {pin.key_id!r} is not a 32-byte Ed25519 key")


@dataclasses.dataclass(frozen=True)
class AgentFiles:
    """Where one agent's files live."""

    directory: Path
    """The configuration directory."""

    @property
    def config(self) -> Path:
        """`agent.toml`; written last, so its presence means a complete registration."""
        return self.directory / "agent.toml"

    @property
    def key(self) -> Path:
        """The agent's Ed25519 private key."""
        return self.directory / "agent.key"

    @property
    def ca(self) -> Path:
        """The CA certificate the agent trusts."""
        return self.directory / "ca.crt"

    def registered(self) -> bool:
        """Whether a registration is stored here."""
        return self.config.exists()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the directory for one running agent; FailedPrecondition if another holds it.

        Two agents on one registration would take each other's place on the service, and the
        second would end the first's commands as leftovers (`_leftovers`). The hold is a lock on
        `agent.lock`, which goes with the process however it ends: a killed agent never keeps
        the next one out.
        """
        fd = os.open(self.directory / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FailedPrecondition(
                    f"another mrzap-agent is running with {self.directory}"
                ) from None
            yield
        finally:
            os.close(fd)

    def save(self, config: AgentConfig, key: Ed25519PrivateKey) -> None:
        """Store a registration: key, CA and configuration, each 0600, in a 0700 directory."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        save_private_key(self.key, key)
        if config.ca_pem is not None:
            write_secret_file(self.ca, config.ca_pem)
        document: dict[str, Any] = {
            "server": config.server,
            "target_id": config.target_id,
            "org_id": config.org_id,
            "name": config.name,
            "ca_file": self.ca.name if config.ca_pem is not None else "",
            "grant_keys": [
                {"key_id": pin.key_id, "public_key": base64.b64encode(pin.public_key).decode()}
                for pin in config.grant_keys
            ],
            "idp": {
                "issuer": config.idp.issuer,
                "client_id": config.idp.client_id,
                "allowed_email_domains": sorted(config.idp.allowed_email_domains),
                "hosted_domain": config.idp.hosted_domain or "",
                "tenant_id": config.idp.tenant_id or "",
                "max_session_age_s": config.idp.max_session_age_s,
            },
        }
        header = "# Written by `mrzap-agent register`. Register again rather than edit it.\n"
        write_secret_file(self.config, (header + tomli_w.dumps(document)).encode())

    def load(self) -> tuple[AgentConfig, Ed25519PrivateKey]:
        """The stored registration and key; InvalidArgument names what is missing or wrong."""
        try:
            raw = tomllib.loads(self.config.read_text())
        except FileNotFoundError:
            raise InvalidArgument(
                f"not registered: {self.config} does not exist (run `mrzap-agent register`)"
            ) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise InvalidArgument(f"{self.config}: {error}") from None
        try:
            config = self._parse(raw)
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise InvalidArgument(f"{self.config} is incomplete or damaged ({error})") from None
        except MrzapError as error:
            raise InvalidArgument(f"{self.config}: {error.message}") from None
        try:
            key = load_private_key(self.key)
        except FileNotFoundError:
            raise InvalidArgument(f"the agent key {self.key} is missing; register again") from None
        return config, key

    def _parse(self, raw: dict[str, Any]) -> AgentConfig:
        idp = raw["idp"]
        ca_file = str(raw.get("ca_file", ""))
        ca_pem = (self.directory / ca_file).read_bytes() if ca_file else None
        return AgentConfig(
            server=str(raw["server"]),
            target_id=str(raw["target_id"]),
            org_id=str(raw["org_id"]),
            name=str(raw.get("name", "")),
            grant_keys=tuple(
                GrantKeyPin(str(pin["key_id"]), base64.b64decode(pin["public_key"], validate=True))
                for pin in raw.get("grant_keys", [])
            ),
            idp=IdpConfig(
                issuer=str(idp["issuer"]),
                client_id=str(idp["client_id"]),
                allowed_email_domains=frozenset(idp.get("allowed_email_domains", [])),
                hosted_domain=idp.get("hosted_domain") or None,
                tenant_id=idp.get("tenant_id") or None,
                max_session_age_s=float(idp.get("max_session_age_s", 12 * 3600)),
            ),
            ca_pem=ca_pem,
        )
