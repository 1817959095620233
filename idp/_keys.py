"""The IdP's RS256 signing key, kept in a file of the data directory.

The file holds one JSON object: the current private key (a JWK with its RFC 7638 thumbprint as
`kid`) and the public halves of earlier keys. Rotating makes a new current key and keeps the
previous public key in the JWKS, so ID tokens signed just before a rotation still verify while
they live. The file is written with mode 0600 and refused when group or others can read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from mrzap.errors import FailedPrecondition

__all__ = ["KEY_FILE_NAME", "KeyFileError", "SigningKeys"]

KEY_FILE_NAME = "idp-signing-keys.json"
ALGORITHM = "RS256"
_KEY_BITS = 2048
# How many earlier public keys stay published after a rotation: the one before is enough for ID
# tokens (minutes) to outlive a rotation; older ones only widen what a leaked old key could sign.
_KEEP_PREVIOUS = 1


class KeyFileError(FailedPrecondition):
    """The signing key file is unsafe (readable by others) or unreadable; the message says which."""


def _new_key() -> RSAKey:
    return RSAKey.generate_key(
        _KEY_BITS, parameters={"use": "sig", "alg": ALGORITHM}, private=True, auto_kid=True
    )


@dataclass(frozen=True)
class SigningKeys:
    """The current private signing key and the earlier public keys still published."""

    current: RSAKey
    """The private key that signs new ID tokens."""
    previous: tuple[RSAKey, ...] = ()
    """Public keys of earlier rotations, newest first, still published in the JWKS."""

    @property
    def kid(self) -> str:
        """The `kid` of the current key, put in every ID token header."""
        kid = self.current.kid
        assert kid is not None  # every key we make or load has one
        return kid

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS document: public keys only, the current one first."""
        keys = [self.current.as_dict(private=False)]
        keys += [key.as_dict(private=False) for key in self.previous]
        return {"keys": keys}

    def rotated(self) -> SigningKeys:
        """A new current key, with this one's public half kept as the newest previous key."""
        public = RSAKey.import_key(self.current.as_dict(private=False))
        return SigningKeys(_new_key(), (public, *self.previous)[:_KEEP_PREVIOUS])

    @classmethod
    def load_or_create(cls, data_dir: Path, *, rotate: bool = False) -> SigningKeys:
        """Load the keys from `data_dir` (creating the directory, mode 0700, and a first key if
        there is none), rotate them if asked, and save any change with mode 0600."""
        path = data_dir / KEY_FILE_NAME
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            keys = cls._load(path)
            if not rotate:
                return keys
            keys = keys.rotated()
        else:
            keys = cls(_new_key())
        keys._save(path)
        return keys

    @classmethod
    def _load(cls, path: Path) -> SigningKeys:
        try:
            # O_NOFOLLOW: the mode we check must be the mode of the file we read.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot open the signing key file: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"{path}: the signing key file is not a regular file")
            if info.st_mode & 0o077:
                raise KeyFileError(
                    f"{path}: the signing key file has mode {stat.S_IMODE(info.st_mode):04o}; "
                    "it must not be accessible by group or others (chmod 600 it, or delete it "
                    "to make a new key)"
                )
            raw = f.read()
        try:
            document = json.loads(raw)
            current = RSAKey.import_key(document["current"])
            previous = tuple(RSAKey.import_key(item) for item in document.get("previous", []))
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{path}: not a valid signing key file: {exc}") from exc
        if not current.is_private or current.kid is None:
            raise KeyFileError(f"{path}: the current key must be a private RSA key with a kid")
        if any(key.is_private or key.kid is None for key in previous):
            raise KeyFileError(f"{path}: previous keys must be public RSA keys with a kid")
        return cls(current, previous)

    def _save(self, path: Path) -> None:
        document = {
            "current": self.current.as_dict(private=True),
            "previous": [key.as_dict(private=False) for key in self.previous],
        }
        tmp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        # Created 0600 from the start (O_EXCL, explicit mode), then renamed over the old file, so
        # the private key is never readable by others, not even for a moment.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(document, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
