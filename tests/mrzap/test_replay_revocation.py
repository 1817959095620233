"""The replay cache and the revocation list."""

from __future__ import annotations

import pytest

from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.envelope import Domain, sign
from mrzap.errors import ResourceExhausted
from mrzap.replay import ReplayCache
from mrzap.revocation import RevocationList, verify_revocation
from mrzap.testing import FixedClock
from mrzap.timestamps import to_timestamp
from mrzap.verification import Reason, VerificationError


def test_replay_refused_until_expiry() -> None:
    clock = FixedClock(1000.0)
    cache = ReplayCache(clock)
    cache.check_and_remember("g1", b"n1", keep_until=1060.0)
    cache.check_and_remember("g1", b"n2", keep_until=1060.0)
    cache.check_and_remember("g2", b"n1", keep_until=1060.0)
    with pytest.raises(VerificationError) as caught:
        cache.check_and_remember("g1", b"n1", keep_until=1060.0)
    assert caught.value.reason is Reason.SYN_REPLAYED
    clock.advance(60.0)
    cache.check_and_remember("g1", b"n1", keep_until=1120.0)
    assert len(cache) == 1


def test_replay_cache_fails_closed_when_full() -> None:
    cache = ReplayCache(FixedClock(0.0), max_entries=2)
    cache.check_and_remember("g", b"1", keep_until=10.0)
    cache.check_and_remember("g", b"2", keep_until=10.0)
    with pytest.raises(ResourceExhausted):
        cache.check_and_remember("g", b"3", keep_until=10.0)


SERVICE_KEY = keys.generate_signing_key()
ALICE = mrzap_pb2.Subject(iss="https://idp", sub="alice", email="alice@example.com")


def _grant(grant_id: str, not_before: float) -> mrzap_pb2.Grant:
    return mrzap_pb2.Grant(grant_id=grant_id, subject=ALICE, not_before=to_timestamp(not_before))


def test_revocation_signature_is_checked() -> None:
    revocation = mrzap_pb2.Revocation(revocation_id="r1", grant_ids=["g1"])
    signed = sign(SERVICE_KEY, Domain.REVOCATION, revocation.SerializeToString(), "k1")
    pinned = {"k1": SERVICE_KEY.public_key()}
    assert verify_revocation(signed, pinned).grant_ids == ["g1"]
    with pytest.raises(VerificationError) as unknown:
        verify_revocation(signed, {"k2": SERVICE_KEY.public_key()})
    assert unknown.value.reason is Reason.UNKNOWN_KEY
    forged = sign(keys.generate_signing_key(), Domain.REVOCATION, signed.payload, "k1")
    with pytest.raises(VerificationError) as bad:
        verify_revocation(forged, pinned)
    assert bad.value.reason is Reason.BAD_SIGNATURE
    wrong_domain = sign(SERVICE_KEY, Domain.GRANT, signed.payload, "k1")
    with pytest.raises(VerificationError):
        verify_revocation(wrong_domain, pinned)


def test_revoke_by_grant_id() -> None:
    revoked = RevocationList(clock=FixedClock(100.0))
    revoked.add(mrzap_pb2.Revocation(grant_ids=["g1"]))
    assert revoked.is_revoked(_grant("g1", 50.0))
    assert not revoked.is_revoked(_grant("g2", 50.0))


def test_revoke_by_subject_only_before_the_cut_off() -> None:
    clock = FixedClock(100.0)
    revoked = RevocationList(clock=clock)
    revoked.add(mrzap_pb2.Revocation(subjects=[ALICE], before=to_timestamp(90.0)))
    assert revoked.is_revoked(_grant("old", 89.0))
    assert not revoked.is_revoked(_grant("new", 95.0))
    other = mrzap_pb2.Grant(grant_id="b", subject=mrzap_pb2.Subject(iss="https://idp", sub="bob"))
    assert not revoked.is_revoked(other)


def test_revocations_are_forgotten_after_retention() -> None:
    clock = FixedClock(0.0)
    revoked = RevocationList(retention_s=10.0, clock=clock)
    revoked.add(mrzap_pb2.Revocation(grant_ids=["g1"]))
    clock.advance(11.0)
    revoked.add(mrzap_pb2.Revocation(grant_ids=["g2"]))
    assert not revoked.is_revoked(_grant("g1", 0.0))
    assert revoked.is_revoked(_grant("g2", 0.0))
