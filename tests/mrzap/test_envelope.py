"""Signed envelopes verify only under the right key, domain and exact bytes."""

from __future__ import annotations

import pytest

from mrzap import keys
from mrzap.envelope import Domain, parse_signed, sign, signed_hash, verify_signature
from mrzap.verification import Reason, VerificationError

KEY = keys.generate_signing_key()
PUBLIC = KEY.public_key()


def test_good_signature_returns_payload() -> None:
    signed = sign(KEY, Domain.GRANT, b"payload", "k1")
    assert verify_signature(signed, PUBLIC, Domain.GRANT) == b"payload"
    assert signed.key_id == "k1"


def test_tampered_payload_is_refused() -> None:
    signed = sign(KEY, Domain.GRANT, b"payload")
    signed.payload = b"paYload"
    with pytest.raises(VerificationError) as caught:
        verify_signature(signed, PUBLIC, Domain.GRANT)
    assert caught.value.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("other", [d for d in Domain if d is not Domain.SYN])
def test_wrong_domain_is_refused(other: Domain) -> None:
    signed = sign(KEY, Domain.SYN, b"payload")
    with pytest.raises(VerificationError):
        verify_signature(signed, PUBLIC, other)


def test_wrong_key_is_refused_with_the_callers_reason() -> None:
    signed = sign(KEY, Domain.SYN, b"payload")
    other = keys.generate_signing_key().public_key()
    with pytest.raises(VerificationError) as caught:
        verify_signature(signed, other, Domain.SYN, Reason.SYN_BAD_SIGNATURE)
    assert caught.value.reason is Reason.SYN_BAD_SIGNATURE


def test_domain_strings_are_distinct_and_nul_terminated() -> None:
    values = [d.value for d in Domain]
    assert len(set(values)) == len(values)
    assert all(v.endswith(b"\x00") and v.count(b"\x00") == 1 for v in values)


def test_parse_signed_refuses_garbage() -> None:
    with pytest.raises(VerificationError) as caught:
        parse_signed(b"\xff\xff\xff")
    assert caught.value.reason is Reason.MALFORMED


def test_hash_is_over_exact_bytes() -> None:
    raw = sign(KEY, Domain.SYN, b"x").SerializeToString()
    assert signed_hash(raw) != signed_hash(raw + b"\x00")
