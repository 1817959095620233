"""TOTP code matching and lock-out durations."""

from __future__ import annotations

import pyotp
import pytest

from auth import _mfa

NOW = 1_800_000_015.0


def test_current_and_neighbouring_steps_match() -> None:
    secret = _mfa.new_secret()
    totp = pyotp.TOTP(secret)
    step = int(NOW) // 30
    for counter in (step - 1, step, step + 1):
        assert _mfa.matching_counter(secret, totp.generate_otp(counter), NOW) == counter


def test_old_and_wrong_codes_do_not_match() -> None:
    secret = _mfa.new_secret()
    totp = pyotp.TOTP(secret)
    step = int(NOW) // 30
    assert _mfa.matching_counter(secret, totp.generate_otp(step - 2), NOW) is None
    assert _mfa.matching_counter(_mfa.new_secret(), totp.at(NOW), NOW) is None


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "12 34 5x"])
def test_malformed_codes_do_not_match(code: str) -> None:
    assert _mfa.matching_counter(_mfa.new_secret(), code, NOW) is None


def test_spaces_are_ignored() -> None:
    secret = _mfa.new_secret()
    code = pyotp.TOTP(secret).at(NOW)
    assert _mfa.matching_counter(secret, f"{code[:3]} {code[3:]}", NOW) == int(NOW) // 30


def test_lock_grows_from_the_fifth_failure() -> None:
    assert [_mfa.lock_duration(n) for n in range(1, 5)] == [None] * 4
    assert [_mfa.lock_duration(n) for n in (5, 6, 7)] == [30.0, 60.0, 120.0]
    assert _mfa.lock_duration(50) == 3600.0


def test_provisioning_uri_names_the_account() -> None:
    uri = _mfa.provisioning_uri("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "alice@example.com", "mrzap")
    assert uri.startswith(
        "otpauth://totp/mrzap:alice%40example.com?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    )
