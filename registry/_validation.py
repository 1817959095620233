"""Checks on what callers (administrators and agents) send the registry.

Error messages never repeat the rejected value: it may be huge, hold control characters meant
for a terminal or a log, or be a secret pasted into the wrong field.
"""

from __future__ import annotations

import datetime
import uuid

from mrzap.errors import InvalidArgument
from mrzap.keys import public_key_from_bytes

__all__ = [
    "MAX_DESCRIPTION_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_SHORT_LENGTH",
    "MAX_TIMEOUT_S",
    "clean_text",
    "duration_words",
    "is_uuid",
    "loggable",
    "public_key",
    "timeout",
    "utc",
]

#: Names and host names: the longest DNS name.
MAX_NAME_LENGTH = 253
MAX_DESCRIPTION_LENGTH = 1024
#: Agent versions and regions.
MAX_SHORT_LENGTH = 64
#: Longer key lifetimes and cleanup timeouts are almost certainly mistakes: ten years.
MAX_TIMEOUT_S = 10 * 365 * 86400.0


def clean_text(value: str, field: str, max_length: int, *, required: bool = False) -> str:
    """`value` without surrounding spaces, if printable and short enough (and not empty when
    `required`); InvalidArgument naming `field` otherwise."""
    value = value.strip()
    if not value and required:
        raise InvalidArgument(f"{field} must not be empty")
    if len(value) > max_length:
        raise InvalidArgument(f"{field} is longer than {max_length} characters")
    if not value.isprintable():
        raise InvalidArgument(f"{field} must be printable: no control characters or line breaks")
    return value


def public_key(raw: bytes) -> bytes:
    """A raw Ed25519 public key, checked."""
    if len(raw) != 32:
        raise InvalidArgument(
            f"the public key must be a raw 32-byte Ed25519 public key, got {len(raw)} bytes"
        )
    try:
        public_key_from_bytes(raw)
    except ValueError:
        raise InvalidArgument("the public key is not a valid Ed25519 public key") from None
    return raw


def timeout(seconds: float, field: str) -> float | None:
    """A positive duration, or None for zero (the default); InvalidArgument when out of range."""
    if seconds == 0:
        return None
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise InvalidArgument(f"{field} must be positive and at most ten years")
    return seconds


def is_uuid(value: str) -> bool:
    """Whether `value` is a UUID in its canonical text form (the form target ids take)."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def loggable(value: str, max_length: int = MAX_DESCRIPTION_LENGTH) -> str:
    """`value` made safe to store and show: control characters replaced, length capped."""
    cleaned = "".join(c if c.isprintable() else "?" for c in value[:max_length])
    return cleaned + ("..." if len(value) > max_length else "")


def utc(seconds: float) -> str:
    """A time for messages."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_words(seconds: float) -> str:
    """A duration for messages: "60 s", "10 min", "24 h"."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"
