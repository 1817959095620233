"""JWKS sources (PROTOCOL.md section 3): discovery over HTTP, caching and rate-limited refetch.

The IdP is a real HTTP server on loopback (`TestIdentityProvider`) that counts JWKS requests; the
clock that rate-limits refetches is a `FixedClock`.
"""

from __future__ import annotations

import asyncio
import socket

import jwt
import pytest

from mrzap import keys
from mrzap.jwks import HttpJwksSource, KeySet, StaticJwksSource, _allowed_url
from mrzap.pktoken import ClientInstanceClaims, PkTokenVerifier
from mrzap.testing import FixedClock, TestIdentityProvider
from mrzap.verification import Reason, VerificationError

NOW = 1_800_000_000.0
UPK = keys.public_key_bytes(keys.generate_signing_key())


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def source(clock: FixedClock) -> HttpJwksSource:
    return HttpJwksSource(clock, timeout_s=2.0)


async def _reason(source: HttpJwksSource, issuer: str, kid: str | None) -> Reason:
    with pytest.raises(VerificationError) as caught:
        await source.signing_key(issuer, kid)
    return caught.value.reason


@pytest.mark.asyncio
async def test_keys_are_fetched_once_and_cached(
    idp: TestIdentityProvider, clock: FixedClock, source: HttpJwksSource
) -> None:
    verifier = PkTokenVerifier(idp.config(), source, clock)
    before = idp.jwks_requests, idp.discovery_requests
    await verifier.verify(idp.pk_token(UPK, issued_at=NOW))
    await verifier.verify(idp.pk_token(UPK, issued_at=NOW, key="ec-1"))
    await verifier.verify(idp.pk_token(UPK, issued_at=NOW))
    assert (idp.jwks_requests, idp.discovery_requests) == (before[0] + 1, before[1] + 1)


@pytest.mark.asyncio
async def test_concurrent_lookups_share_one_fetch(
    idp: TestIdentityProvider, source: HttpJwksSource
) -> None:
    before = idp.jwks_requests
    found = await asyncio.gather(*(source.signing_key(idp.issuer, "rsa-1") for _ in range(10)))
    assert {key.key_id for key in found} == {"rsa-1"}
    assert idp.jwks_requests == before + 1


@pytest.mark.asyncio
async def test_unknown_kid_refetches_at_most_once_a_minute(
    idp: TestIdentityProvider, clock: FixedClock, source: HttpJwksSource
) -> None:
    verifier = PkTokenVerifier(idp.config(), source, clock)
    await verifier.verify(idp.pk_token(UPK, issued_at=NOW))
    before = idp.jwks_requests

    rotated = idp.rotate()  # the IdP starts signing with a key this verifier has not seen
    identity = await verifier.verify(idp.pk_token(UPK, issued_at=NOW, key=rotated))
    assert identity.sub == "alice-sub"
    assert idp.jwks_requests == before + 1

    clock.advance(59)  # a made-up kid within the minute: refused without asking the IdP
    assert await _reason(source, idp.issuer, "made-up-1") is Reason.TOKEN_UNKNOWN_KEY
    assert await _reason(source, idp.issuer, "made-up-2") is Reason.TOKEN_UNKNOWN_KEY
    assert idp.jwks_requests == before + 1
    assert (await source.signing_key(idp.issuer, rotated)).key_id == rotated

    clock.advance(1)  # a minute after the refetch: one more
    assert await _reason(source, idp.issuer, "made-up-3") is Reason.TOKEN_UNKNOWN_KEY
    assert idp.jwks_requests == before + 2
    assert await _reason(source, idp.issuer, "made-up-4") is Reason.TOKEN_UNKNOWN_KEY
    assert idp.jwks_requests == before + 2


@pytest.mark.asyncio
async def test_old_keys_are_fetched_again_and_kept_if_the_idp_is_down(
    idp: TestIdentityProvider, clock: FixedClock
) -> None:
    source = HttpJwksSource(clock, max_age_s=3600.0)
    await source.signing_key(idp.issuer, "rsa-1")
    before = idp.jwks_requests
    clock.advance(3599)
    await source.signing_key(idp.issuer, "rsa-1")
    assert idp.jwks_requests == before
    clock.advance(1)
    await source.signing_key(idp.issuer, "rsa-1")
    assert idp.jwks_requests == before + 1
    clock.advance(3600)
    idp.available = False
    try:
        assert (await source.signing_key(idp.issuer, "rsa-1")).key_id == "rsa-1"
    finally:
        idp.available = True


@pytest.mark.asyncio
async def test_idp_answering_with_errors(idp: TestIdentityProvider, clock: FixedClock) -> None:
    verifier = PkTokenVerifier(idp.config(), HttpJwksSource(clock), clock)
    idp.available = False
    try:
        with pytest.raises(VerificationError) as caught:
            await verifier.verify(idp.pk_token(UPK, issued_at=NOW))
    finally:
        idp.available = True
    assert caught.value.reason is Reason.TOKEN_JWKS_UNAVAILABLE
    assert await verifier.verify(idp.pk_token(UPK, issued_at=NOW))  # no failure is cached


@pytest.mark.asyncio
async def test_idp_not_listening(source: HttpJwksSource) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    issuer = f"http://127.0.0.1:{port}"
    assert await _reason(source, issuer, "rsa-1") is Reason.TOKEN_JWKS_UNAVAILABLE


@pytest.mark.asyncio
async def test_refetch_for_unknown_kid_while_the_idp_is_down(
    idp: TestIdentityProvider, source: HttpJwksSource
) -> None:
    await source.signing_key(idp.issuer, "rsa-1")
    idp.available = False
    try:
        assert await _reason(source, idp.issuer, "new") is Reason.TOKEN_JWKS_UNAVAILABLE
        assert (await source.signing_key(idp.issuer, "rsa-1")).key_id == "rsa-1"
    finally:
        idp.available = True


@pytest.mark.asyncio
async def test_discovery_must_name_the_issuer_it_was_fetched_for(
    idp: TestIdentityProvider, source: HttpJwksSource
) -> None:
    """The same server under another name: its discovery document names 127.0.0.1."""
    port = idp.issuer.rsplit(":", 1)[1]
    reason = await _reason(source, f"http://localhost:{port}", "rsa-1")
    assert reason is Reason.TOKEN_JWKS_UNAVAILABLE
    assert await _reason(source, f"{idp.issuer}/", "rsa-1") is Reason.TOKEN_JWKS_UNAVAILABLE


@pytest.mark.asyncio
async def test_verifier_reports_the_idp_being_down(clock: FixedClock) -> None:
    """A verifier pinned to an issuer nobody serves refuses with TOKEN_JWKS_UNAVAILABLE."""
    with TestIdentityProvider() as gone:
        config = gone.config()
        token = gone.pk_token(UPK, issued_at=NOW)
    verifier = PkTokenVerifier(config, HttpJwksSource(clock, timeout_s=2.0), clock)
    with pytest.raises(VerificationError) as caught:
        await verifier.verify(token)
    assert caught.value.reason is Reason.TOKEN_JWKS_UNAVAILABLE


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://idp.example.com/jwks", True),
        ("http://127.0.0.1:8080/jwks", True),
        ("http://[::1]/jwks", True),
        ("http://localhost/jwks", True),
        ("http://idp.example.com/jwks", False),
        ("http://10.0.0.1/jwks", False),
        ("file:///etc/passwd", False),
        ("ftp://idp.example.com/jwks", False),
        ("https:///jwks", False),
    ],
)
def test_jwks_uri_must_be_https_or_loopback(url: str, allowed: bool) -> None:
    assert _allowed_url(url) is allowed


# --- key sets -----------------------------------------------------------------------------------


def test_key_set_skips_keys_that_cannot_verify(idp: TestIdentityProvider) -> None:
    rsa = idp.public_jwk("rsa-1")
    keyset = KeySet.from_jwks(
        {
            "keys": [
                rsa,
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                {**idp.public_jwk("ec-1"), "use": "enc"},
                {**idp.public_jwk("rsa-unpublished"), "d": "private"},
                {"kty": "XYZ", "kid": "odd"},
                "not a key",
                {**idp.public_jwk("ec-1"), "kid": "rsa-1"},  # a repeated kid
            ]
        }
    )
    assert list(keyset.by_kid) == ["rsa-1"]
    assert keyset.find(None) is keyset.by_kid["rsa-1"]


@pytest.mark.parametrize("document", [None, [], {}, {"keys": "x"}])
def test_key_set_refuses_what_is_not_a_jwks(document: object) -> None:
    with pytest.raises(ValueError, match="JWKS"):
        KeySet.from_jwks(document)


@pytest.mark.asyncio
async def test_static_source(idp: TestIdentityProvider) -> None:
    source = idp.static_jwks_source()
    key = await source.signing_key(idp.issuer, "ec-1")
    assert isinstance(key, jwt.PyJWK)
    assert key.algorithm_name == "ES256"
    for issuer, kid in [(idp.issuer, "nope"), (idp.issuer, None), ("https://other", "ec-1")]:
        with pytest.raises(VerificationError) as caught:
            await source.signing_key(issuer, kid)
        assert caught.value.reason is Reason.TOKEN_UNKNOWN_KEY


@pytest.mark.asyncio
async def test_static_source_single_key_without_kid(idp: TestIdentityProvider) -> None:
    jwk = {k: v for k, v in idp.public_jwk("rsa-1").items() if k != "kid"}
    source = StaticJwksSource({idp.issuer: {"keys": [jwk]}})
    clock = FixedClock(NOW)
    verifier = PkTokenVerifier(idp.config(), source, clock)
    cic = ClientInstanceClaims.generate(UPK)
    claims = idp.id_token_claims(issued_at=NOW, nonce=cic.nonce())
    token = idp.pk_token(UPK, issued_at=NOW)
    token.id_token = idp.mint(claims, headers={"kid": None})
    token.rz = cic.rz
    assert (await verifier.verify(token)).sub == "alice-sub"
