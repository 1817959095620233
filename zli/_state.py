"""zli's files in the user's config directory: the session key and the login state, both 0600."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrzap.errors import InvalidArgument, Unauthenticated
from mrzap.keys import load_private_key, save_private_key, write_secret_file

__all__ = ["LoginState", "StateDir", "default_config_dir"]


def default_config_dir() -> Path:
    """`$MRZAP_CONFIG_DIR`, else `$XDG_CONFIG_HOME/mrzap`, else `~/.config/mrzap`."""
    explicit = os.environ.get("MRZAP_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mrzap"


@dataclasses.dataclass(frozen=True)
class LoginState:
    """What zli remembers between commands after `zli login`."""

    server: str
    """The service address, host:port."""

    ca_file: str
    """The CA certificate that signs the service's TLS certificate; empty for the system roots."""

    issuer: str = ""
    """The IdP issuer the session came from."""

    client_id: str = ""
    """The OIDC client id."""

    scopes: tuple[str, ...] = ()
    """The OIDC scopes."""

    client_secret: str = dataclasses.field(default="", repr=False)
    """The OIDC client secret, for IdPs that need one."""

    id_token: str = dataclasses.field(default="", repr=False)
    """The first ID token of the session (its nonce commits to the session key)."""

    rz: str = dataclasses.field(default="", repr=False)
    """The randomness of the PK token's client instance claims."""

    refreshed_id_token: str = dataclasses.field(default="", repr=False)
    """The newest refreshed ID token, if any."""

    refresh_token: str = dataclasses.field(default="", repr=False)
    """The IdP refresh token."""

    session_token: str = dataclasses.field(default="", repr=False)
    """The service session's bearer token."""

    session_expires_at: float = 0.0
    """When the service session expires unless refreshed."""

    email: str = ""
    """The user's email, for display."""


class StateDir:
    """The config directory and the files zli keeps in it."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_config_dir()

    @property
    def key_file(self) -> Path:
        """The session key (Ed25519, 0600)."""
        return self.path / "session.key"

    @property
    def state_file(self) -> Path:
        """The login state (JSON, 0600)."""
        return self.path / "session.json"

    def save(self, state: LoginState, key: Ed25519PrivateKey | None = None) -> None:
        """Write the state (and a new session key) with mode 0600."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if key is not None:
            save_private_key(self.key_file, key)
        data = dataclasses.asdict(state)
        write_secret_file(self.state_file, json.dumps(data, indent=2).encode())

    def load(self) -> LoginState:
        """The saved state; Unauthenticated if there is none."""
        try:
            data: Any = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise Unauthenticated("not logged in: run `zli login`") from None
        except ValueError:
            raise InvalidArgument(f"{self.state_file} is damaged: run `zli login` again") from None
        fields = {f.name for f in dataclasses.fields(LoginState)}
        if not isinstance(data, dict) or not {"server", "ca_file"} <= data.keys():
            raise InvalidArgument(f"{self.state_file} is damaged: run `zli login` again")
        data["scopes"] = tuple(data.get("scopes", ()))
        return LoginState(**{k: v for k, v in data.items() if k in fields})

    def load_key(self) -> Ed25519PrivateKey:
        """The session key; Unauthenticated if there is none."""
        if not self.key_file.exists():
            raise Unauthenticated("not logged in: run `zli login`")
        return load_private_key(self.key_file)

    def clear(self) -> None:
        """Forget the session: remove the key and the tokens."""
        for file in (self.key_file, self.state_file):
            file.unlink(missing_ok=True)
