"""Grants verify only when signed by a pinned service key, in their time window, for this target."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.envelope import Domain, parse_signed, sign
from mrzap.errors import InvalidArgument
from mrzap.grant import GrantSigner, new_grant_id, verify_grant
from mrzap.timestamps import to_timestamp
from mrzap.verification import Reason, VerificationError

NOW = 1_800_000_000.0
SERVICE_KEY = keys.generate_signing_key()
SIGNER = GrantSigner(SERVICE_KEY, "svc-1")
PINNED = {"svc-1": SERVICE_KEY.public_key()}


def make_grant(**overrides: object) -> mrzap_pb2.Grant:
    grant = mrzap_pb2.Grant(
        grant_id=new_grant_id(),
        org_id="org-1",
        subject=mrzap_pb2.Subject(iss="https://idp", sub="alice", email="alice@example.com"),
        upk=keys.public_key_bytes(keys.generate_signing_key()),
        target_id="target-1",
        target_public_key=keys.public_key_bytes(keys.generate_signing_key()),
        verb=mrzap_pb2.VERB_SHELL,
        target_user="alice",
        not_before=to_timestamp(NOW),
        start_by=to_timestamp(NOW + 60),
        session_expires_at=to_timestamp(NOW + 3600),
    )
    for name, value in overrides.items():
        if isinstance(value, float):
            getattr(grant, name).CopyFrom(to_timestamp(value))
        else:
            setattr(grant, name, value)
    return grant


def reason_of(
    signed: mrzap_pb2.Signed, *, now: float = NOW + 1, target: str = "target-1"
) -> Reason:
    with pytest.raises(VerificationError) as caught:
        verify_grant(signed, PINNED, target_id=target, now=now)
    return caught.value.reason


def test_good_grant_verifies() -> None:
    grant = make_grant()
    verified = verify_grant(SIGNER.sign(grant), PINNED, target_id="target-1", now=NOW)
    assert verified.grant_id == grant.grant_id
    assert verified.key_id == "svc-1"


def test_unknown_service_key() -> None:
    other = GrantSigner(keys.generate_signing_key(), "svc-evil")
    assert reason_of(other.sign(make_grant())) is Reason.GRANT_UNKNOWN_KEY


def test_forged_with_pinned_key_id_but_another_key() -> None:
    forger = GrantSigner(keys.generate_signing_key(), "svc-1")
    assert reason_of(forger.sign(make_grant())) is Reason.GRANT_BAD_SIGNATURE


def test_tampered_payload() -> None:
    signed = SIGNER.sign(make_grant())
    tampered = mrzap_pb2.Grant.FromString(signed.payload)
    tampered.target_user = "root"
    signed.payload = tampered.SerializeToString()
    assert reason_of(signed) is Reason.GRANT_BAD_SIGNATURE


def test_wrong_domain() -> None:
    grant = make_grant(key_id="svc-1")
    signed = sign(SERVICE_KEY, Domain.SYN, grant.SerializeToString(), "svc-1")
    assert reason_of(signed) is Reason.GRANT_BAD_SIGNATURE


def test_inner_key_id_must_match_envelope() -> None:
    grant = make_grant(key_id="svc-2")
    signed = sign(SERVICE_KEY, Domain.GRANT, grant.SerializeToString(), "svc-1")
    assert reason_of(signed) is Reason.MALFORMED


def test_not_yet_valid() -> None:
    assert reason_of(SIGNER.sign(make_grant()), now=NOW - 0.001) is Reason.GRANT_NOT_YET_VALID


def test_start_by_passed() -> None:
    assert reason_of(SIGNER.sign(make_grant()), now=NOW + 60) is Reason.GRANT_START_BY_PASSED


def test_other_target() -> None:
    assert reason_of(SIGNER.sign(make_grant()), target="target-2") is Reason.GRANT_WRONG_TARGET


@pytest.mark.parametrize(
    "overrides",
    [
        {"grant_id": ""},
        {"target_id": ""},
        {"verb": mrzap_pb2.VERB_UNSPECIFIED},
        {"upk": b"short"},
        {"start_by": NOW - 1},
        {"session_expires_at": NOW + 30},
    ],
)
def test_signer_refuses_incomplete_grants(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        SIGNER.sign(make_grant(**overrides))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_of_a_signed_grant_is_rejected(data: st.DataObject) -> None:
    raw = bytearray(SIGNER.sign(make_grant()).SerializeToString())
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    raw[index] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(VerificationError):
        verify_grant(parse_signed(bytes(raw)), PINNED, target_id="target-1", now=NOW)
