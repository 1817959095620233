"""TOTP (RFC 6238) codes: enrolment secrets, matching a code to its time step, and lock-out."""

from __future__ import annotations

import pyotp

__all__ = ["LOCKOUT_AFTER", "lock_duration", "matching_counter", "new_secret", "provisioning_uri"]

#: Failed codes in a row before the user is locked out.
LOCKOUT_AFTER = 5
_STEP_S = 30
_BASE_LOCK_S = 30.0
_MAX_LOCK_S = 3600.0


def new_secret() -> str:
    """A new random base32 TOTP secret (160 bits)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The otpauth:// URI authenticator apps read from a QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)


def matching_counter(secret: str, code: str, now: float) -> int | None:
    """The time step whose code is `code` (current step, or one either side), or None."""
    code = code.strip().replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = int(now) // _STEP_S
    for counter in (current, current - 1, current + 1):
        if pyotp.utils.strings_equal(totp.generate_otp(counter), code):
            return counter
    return None


def lock_duration(failures: int) -> float | None:
    """How long to lock after `failures` failures in a row: doubling from 30 s, at most 1 h."""
    if failures < LOCKOUT_AFTER:
        return None
    return min(_BASE_LOCK_S * 2.0 ** (failures - LOCKOUT_AFTER), _MAX_LOCK_S)
