"""The organisation's service grant keys (PROTOCOL.md sections 1 and 4).

Each key is an Ed25519 private key in `DATA_DIR/keys/grant-<key_id>.key` (mode 0600, refused if
group or others can read it). A key id carries the key's creation time (`20250101T120000Z-1a2b3c4d`)
so ids sort by age and the time needs no second file. The first key is created on first start;
the newest key signs, and agents pin the public halves of all of them at registration, so a new
key can be added before it is used.
"""

from __future__ import annotations

import calendar
import dataclasses
import re
import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrzap.clock import Clock, SystemClock
from mrzap.errors import InvalidArgument
from mrzap.grant import GrantSigner
from mrzap.keys import generate_signing_key, load_private_key, public_key_bytes, save_private_key

__all__ = ["GrantKey", "GrantKeyring"]

_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_KEY_ID = re.compile(r"^(?P<time>\d{8}T\d{6}Z)-[0-9a-f]{8}$")


@dataclasses.dataclass(frozen=True)
class GrantKey:
    """The public half of a service grant key, as agents pin it."""

    key_id: str
    """The id that Signed envelopes and grants name."""

    public_key: bytes
    """The raw 32-byte Ed25519 public key."""

    created_at: float
    """When the key was created (Unix seconds)."""


def _new_key_id(now: float) -> str:
    return f"{time.strftime(_TIME_FORMAT, time.gmtime(now))}-{secrets.token_hex(4)}"


def _created_at(key_id: str) -> float:
    match = _KEY_ID.match(key_id)
    if match is None:
        raise InvalidArgument(f"{key_id!r} is not a grant key id")
    return float(calendar.timegm(time.strptime(match.group("time"), _TIME_FORMAT)))


class GrantKeyring:
    """The organisation's grant keys, oldest first; the newest one signs."""

    def __init__(self, keys: dict[str, Ed25519PrivateKey]) -> None:
        if not keys:
            raise InvalidArgument("a grant keyring needs at least one key")
        self._private = dict(sorted(keys.items()))
        self._public = tuple(
            GrantKey(key_id, public_key_bytes(key), _created_at(key_id))
            for key_id, key in self._private.items()
        )

    @classmethod
    def load_or_create(cls, keys_dir: Path, clock: Clock | None = None) -> GrantKeyring:
        """Load every `grant-*.key` in `keys_dir`, creating the first key when there is none.

        Blocking file I/O: call it before serving, or through a thread.
        """
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys: dict[str, Ed25519PrivateKey] = {}
        for path in sorted(keys_dir.glob("grant-*.key")):
            key_id = path.name.removeprefix("grant-").removesuffix(".key")
            if _KEY_ID.match(key_id) is None:
                raise InvalidArgument(
                    f"{path} is not named grant-<key id>.key with a key id like "
                    "20250101T120000Z-1a2b3c4d: rename or remove it"
                )
            keys[key_id] = load_private_key(path)
        if not keys:
            key_id = _new_key_id((clock or SystemClock()).now())
            key = generate_signing_key()
            save_private_key(keys_dir / f"grant-{key_id}.key", key)
            keys[key_id] = key
        return cls(keys)

    @property
    def public_keys(self) -> tuple[GrantKey, ...]:
        """The public halves of every key, oldest first."""
        return self._public

    def signer(self) -> GrantSigner:
        """A signer with the newest key."""
        key_id = next(reversed(self._private))
        return GrantSigner(self._private[key_id], key_id)
