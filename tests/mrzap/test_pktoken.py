"""PK tokens (PROTOCOL.md section 3): every check refuses with its own reason.

ID tokens are signed with real RSA-2048 and P-256 keys, and the verifier fetches the JWKS over
HTTP from a real server on loopback (`TestIdentityProvider`). Each negative test changes exactly
one thing about an otherwise valid token, so it fails if its check is removed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Unpack

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.errors import InvalidArgument
from mrzap.jwks import HttpJwksSource, JwksSource, StaticJwksSource
from mrzap.pktoken import ClientInstanceClaims, PkTokenVerifier, VerifiedIdentity, nonce_for
from mrzap.testing import FixedClock, IdpOverrides, TestIdentityProvider
from mrzap.verification import Reason, VerificationError

NOW = 1_800_000_000.0
UPK = keys.public_key_bytes(keys.generate_signing_key())


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


class Check:
    """A verifier for one IdP configuration, fetching keys over HTTP, and token builders."""

    def __init__(
        self,
        idp: TestIdentityProvider,
        clock: FixedClock,
        jwks: JwksSource | None = None,
        **overrides: Unpack[IdpOverrides],
    ) -> None:
        self.idp = idp
        self.clock = clock
        config = idp.config(client_id="zli", **overrides)
        self.verifier = PkTokenVerifier(config, jwks or HttpJwksSource(clock), clock)

    def claims(
        self, cic: ClientInstanceClaims, changes: Mapping[str, object] | None = None
    ) -> dict[str, object]:
        """Valid ID token claims for `cic`, issued now; `changes` override (None removes)."""
        return self.idp.id_token_claims(
            issued_at=self.clock.now(), nonce=cic.nonce(), extra_claims=changes
        )

    def token(
        self,
        changes: Mapping[str, object] | None = None,
        *,
        key: str = "rsa-1",
        headers: Mapping[str, object] | None = None,
        alg: str | None = None,
    ) -> mrzap_pb2.PkToken:
        """A PK token for UPK whose ID token has `changes` applied, signed as asked."""
        cic = ClientInstanceClaims.generate(UPK)
        id_token = self.idp.mint(self.claims(cic, changes), key=key, headers=headers, alg=alg)
        return mrzap_pb2.PkToken(id_token=id_token, upk=cic.upk, rz=cic.rz)

    async def verify(self, token: mrzap_pb2.PkToken) -> VerifiedIdentity:
        return await self.verifier.verify(token)

    async def reason(self, token: mrzap_pb2.PkToken) -> Reason:
        with pytest.raises(VerificationError) as caught:
            await self.verifier.verify(token)
        return caught.value.reason


@pytest.fixture
def check(idp: TestIdentityProvider, clock: FixedClock) -> Check:
    return Check(idp, clock)


RS256_HEADER = '{"alg":"RS256"}'
BAD_KID_HEADER = '{"alg":"RS256","kid":7}'


def _b64(data: bytes | str) -> str:
    data = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _with_id_token(token: mrzap_pb2.PkToken, id_token: str) -> mrzap_pb2.PkToken:
    changed = mrzap_pb2.PkToken()
    changed.CopyFrom(token)
    changed.id_token = id_token
    return changed


# --- client instance claims ---------------------------------------------------------------------


def test_nonce_is_the_hash_of_the_sorted_compact_cic() -> None:
    rz = "ab" * 32
    cic = json.dumps({"alg": "EdDSA", "rz": rz, "upk": _b64(UPK)}, separators=(",", ":"))
    expected = _b64(hashlib.sha256(cic.encode()).digest())
    assert ClientInstanceClaims(UPK, rz).to_json() == cic.encode()
    assert ClientInstanceClaims(UPK, rz).nonce() == expected == nonce_for(UPK, rz)
    assert "=" not in expected
    assert len(expected) == 43


def test_generated_claims_have_fresh_randomness() -> None:
    first, second = ClientInstanceClaims.generate(UPK), ClientInstanceClaims.generate(UPK)
    assert len(first.rz) == 64
    assert first.rz != second.rz
    assert first.nonce() != second.nonce()


@pytest.mark.parametrize(
    ("upk", "rz"),
    [(UPK[:31], "ab" * 32), (UPK + b"\0", "ab" * 32), (UPK, "AB" * 32), (UPK, "ab" * 31)],
)
def test_claims_refuse_bad_keys_and_randomness(upk: bytes, rz: str) -> None:
    with pytest.raises(InvalidArgument):
        ClientInstanceClaims(upk, rz)


@settings(max_examples=200)
@given(
    upk=st.binary(min_size=32, max_size=32),
    other_upk=st.binary(min_size=32, max_size=32),
    rz=st.binary(min_size=32, max_size=32).map(bytes.hex),
    other_rz=st.binary(min_size=32, max_size=32).map(bytes.hex),
)
def test_the_nonce_commits_to_both_upk_and_rz(
    upk: bytes, other_upk: bytes, rz: str, other_rz: str
) -> None:
    nonce = nonce_for(upk, rz)
    assert (nonce_for(other_upk, rz) == nonce) == (other_upk == upk)
    assert (nonce_for(upk, other_rz) == nonce) == (other_rz == rz)


# --- the good path ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rs256_token_verifies_with_the_jwks_fetched_over_http(check: Check) -> None:
    token = check.token({"groups": ["ops", "dev"]})
    identity = await check.verify(token)
    assert identity.iss == check.idp.issuer
    assert identity.sub == "alice-sub"
    assert identity.email == "alice@example.com"
    assert identity.email_verified is True
    assert identity.groups == ("ops", "dev")
    assert identity.upk == UPK
    assert identity.session_started_at == NOW
    assert identity.expires_at == NOW + 600
    assert identity.claims["nonce"] == nonce_for(token.upk, token.rz)


@pytest.mark.asyncio
async def test_es256_token_verifies(check: Check) -> None:
    identity = await check.verify(check.token(key="ec-1"))
    assert identity.sub == "alice-sub"


@pytest.mark.asyncio
async def test_testing_helper_pk_token_verifies(check: Check) -> None:
    token = check.idp.pk_token(UPK, sub="bob-sub", email="bob@example.com", issued_at=NOW)
    assert (await check.verify(token)).email == "bob@example.com"


@pytest.mark.asyncio
async def test_a_jwk_without_alg_is_bound_to_the_header_algorithm(
    idp: TestIdentityProvider, clock: FixedClock
) -> None:
    jwk = {k: v for k, v in idp.public_jwk("rsa-1").items() if k != "alg"}
    check = Check(idp, clock, StaticJwksSource({idp.issuer: {"keys": [jwk]}}))
    assert await check.verify(check.token(alg="PS256"))
    assert await check.verify(check.token(alg="RS384"))


@pytest.mark.asyncio
async def test_unverified_email_is_reported_when_no_domain_is_required(check: Check) -> None:
    identity = await check.verify(check.token({"email_verified": False}))
    assert identity.email_verified is False


# --- form -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "id_token",
    [
        "",
        "not a jwt",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJSUzI1NiJ9.e30=.c2ln",
        "!!!.???.***",
        f"{_b64('not json')}.{_b64('{}')}.c2ln",
        f"{_b64(RS256_HEADER)}.{_b64('[1,2]')}.c2ln",
        f"{_b64(RS256_HEADER)}.{_b64('not json')}.c2ln",
        f"{_b64(BAD_KID_HEADER)}.{_b64('{}')}.c2ln",
        "x" * 20_000 + ".e30.c2ln",
    ],
)
async def test_malformed_id_token(check: Check, id_token: str) -> None:
    token = _with_id_token(check.token(), id_token)
    assert await check.reason(token) is Reason.TOKEN_MALFORMED


@pytest.mark.asyncio
@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "not json"])
async def test_signed_payload_that_is_not_a_claims_object(check: Check, payload: str) -> None:
    token = _with_id_token(check.token(), check.idp.mint_raw(payload.encode()))
    assert await check.reason(token) is Reason.TOKEN_MALFORMED


@pytest.mark.asyncio
async def test_duplicate_claims_are_malformed(check: Check) -> None:
    """Signed by the IdP, so the repeated `sub` is the only thing wrong with it."""
    cic = ClientInstanceClaims.generate(UPK)
    payload = json.dumps(check.claims(cic))[:-1] + ', "sub": "mallory-sub"}'
    id_token = check.idp.mint_raw(payload.encode())
    token = mrzap_pb2.PkToken(id_token=id_token, upk=cic.upk, rz=cic.rz)
    assert await check.reason(token) is Reason.TOKEN_MALFORMED


@pytest.mark.asyncio
@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "aud"])
async def test_missing_required_claim_is_malformed(check: Check, claim: str) -> None:
    assert await check.reason(check.token({claim: None})) is Reason.TOKEN_MALFORMED


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("claim", "value"), [("exp", "soon"), ("iat", True), ("nbf", "later"), ("aud", [1])]
)
async def test_claims_of_the_wrong_type_are_malformed(
    check: Check, claim: str, value: object
) -> None:
    assert await check.reason(check.token({claim: value})) is Reason.TOKEN_MALFORMED


@pytest.mark.asyncio
@pytest.mark.parametrize(("upk", "rz"), [(UPK[:31], "ab" * 32), (UPK, "AB" * 32), (UPK, "ab")])
async def test_bad_upk_or_rz_is_malformed(check: Check, upk: bytes, rz: str) -> None:
    token = check.token()
    token.upk, token.rz = upk, rz
    assert await check.reason(token) is Reason.TOKEN_MALFORMED


# --- algorithm, key and signature -------------------------------------------------------------


@pytest.mark.asyncio
async def test_tampered_payload(check: Check) -> None:
    token = check.token()
    header, payload, signature = token.id_token.split(".")
    claims = json.loads(_unb64(payload))
    claims["sub"] = "mallory-sub"
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    assert await check.reason(_with_id_token(token, forged)) is Reason.TOKEN_BAD_SIGNATURE


@pytest.mark.asyncio
@pytest.mark.parametrize("key", ["rsa-1", "ec-1"])
async def test_tampered_signature(check: Check, key: str) -> None:
    token = check.token(key=key)
    head, _, signature = token.id_token.rpartition(".")
    raw = bytearray(_unb64(signature))
    raw[len(raw) // 2] ^= 1
    forged = f"{head}.{_b64(bytes(raw))}"
    assert await check.reason(_with_id_token(token, forged)) is Reason.TOKEN_BAD_SIGNATURE


@pytest.mark.asyncio
async def test_alg_none(check: Check) -> None:
    assert await check.reason(check.token(alg="none")) is Reason.TOKEN_ALG_NOT_ALLOWED


@pytest.mark.asyncio
@pytest.mark.parametrize("alg", ["HS256", "HS512"])
async def test_hmac_signed_with_the_public_key(check: Check, alg: str) -> None:
    """The key-confusion attack: HMAC keyed with the IdP's public RSA key, which anyone has."""
    assert await check.reason(check.token(alg=alg)) is Reason.TOKEN_ALG_NOT_ALLOWED


@pytest.mark.asyncio
async def test_algorithm_outside_the_configured_allowlist(
    idp: TestIdentityProvider, clock: FixedClock
) -> None:
    check = Check(idp, clock, allowed_algorithms=frozenset({"RS256"}))
    assert await check.verify(check.token())
    assert await check.reason(check.token(key="ec-1")) is Reason.TOKEN_ALG_NOT_ALLOWED


@pytest.mark.asyncio
async def test_token_signed_by_a_key_not_in_the_jwks(check: Check) -> None:
    assert await check.reason(check.token(key="rsa-unpublished")) is Reason.TOKEN_UNKNOWN_KEY


@pytest.mark.asyncio
async def test_unpublished_key_claiming_a_published_kid(check: Check) -> None:
    token = check.token(key="rsa-unpublished", headers={"kid": "rsa-1"})
    assert await check.reason(token) is Reason.TOKEN_BAD_SIGNATURE


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("key", "headers", "alg"),
    [
        ("ec-1", {"kid": "rsa-1"}, None),  # ES256 naming an RSA key
        ("rsa-1", {"kid": "ec-1"}, None),  # RS256 naming an EC key
        ("rsa-1", None, "PS256"),  # the JWK says RS256
        ("ec-1", {"kid": None}, None),  # no kid, and the JWKS has several keys
    ],
)
async def test_key_that_does_not_fit_the_algorithm(
    check: Check, key: str, headers: dict[str, object] | None, alg: str | None
) -> None:
    token = check.token(key=key, headers=headers, alg=alg)
    assert await check.reason(token) is Reason.TOKEN_UNKNOWN_KEY


@pytest.mark.asyncio
async def test_keys_come_from_the_pinned_issuer_not_the_tokens(
    idp: TestIdentityProvider, clock: FixedClock
) -> None:
    """A token from another IdP, naming that IdP as `iss`, with a kid the pinned IdP also has.

    If the verifier fetched keys for the token's `iss`, the signature would verify.
    """
    check = Check(idp, clock)
    with TestIdentityProvider() as evil:
        evil_check = Check(evil, clock)
        cic = ClientInstanceClaims.generate(UPK)
        forged = evil.mint(evil_check.claims(cic), key="rsa-1")
        token = mrzap_pb2.PkToken(id_token=forged, upk=cic.upk, rz=cic.rz)
        assert await evil_check.verify(token)
        assert await check.reason(token) is Reason.TOKEN_BAD_SIGNATURE


# --- issuer, audience, nonce ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_wrong_issuer(check: Check) -> None:
    token = check.token({"iss": "https://evil.example.com"})
    assert await check.reason(token) is Reason.TOKEN_WRONG_ISSUER


@pytest.mark.asyncio
@pytest.mark.parametrize("aud", ["another-client", ["another-client", "third"]])
async def test_wrong_audience(check: Check, aud: object) -> None:
    assert await check.reason(check.token({"aud": aud})) is Reason.TOKEN_WRONG_AUDIENCE


@pytest.mark.asyncio
@pytest.mark.parametrize("azp", [None, "another-client"])
async def test_several_audiences_need_azp(check: Check, azp: str | None) -> None:
    token = check.token({"aud": ["another-client", "zli"], "azp": azp})
    assert await check.reason(token) is Reason.TOKEN_AZP_MISMATCH


@pytest.mark.asyncio
async def test_several_audiences_with_the_right_azp(check: Check) -> None:
    assert await check.verify(check.token({"aud": ["another-client", "zli"], "azp": "zli"}))
    assert await check.verify(check.token({"aud": ["zli"]}))


@pytest.mark.asyncio
async def test_nonce_not_matching_upk(check: Check) -> None:
    token = check.token()
    token.upk = keys.public_key_bytes(keys.generate_signing_key())
    assert await check.reason(token) is Reason.TOKEN_NONCE_MISMATCH


@pytest.mark.asyncio
async def test_nonce_not_matching_rz(check: Check) -> None:
    token = check.token()
    token.rz = ("0" if token.rz[0] != "0" else "1") + token.rz[1:]
    assert await check.reason(token) is Reason.TOKEN_NONCE_MISMATCH


@pytest.mark.asyncio
@pytest.mark.parametrize("nonce", [None, "", 42, "not-the-commitment"])
async def test_missing_or_foreign_nonce(check: Check, nonce: object) -> None:
    assert await check.reason(check.token({"nonce": nonce})) is Reason.TOKEN_NONCE_MISMATCH


# --- organisation -------------------------------------------------------------------------------


@pytest.fixture
def domain_check(idp: TestIdentityProvider, clock: FixedClock) -> Check:
    return Check(idp, clock, allowed_email_domains=frozenset({"Example.com"}))


@pytest.mark.asyncio
async def test_allowed_email_domain(domain_check: Check) -> None:
    assert await domain_check.verify(domain_check.token({"email": "alice@EXAMPLE.com"}))
    assert await domain_check.verify(domain_check.token({"email_verified": "true"}))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "email",
    ["alice@evil.com", "alice@sub.example.com", "alice@example.com.evil.com", "example.com", ""],
)
async def test_email_domain_not_allowed(domain_check: Check, email: str) -> None:
    assert (
        await domain_check.reason(domain_check.token({"email": email}))
        is Reason.TOKEN_ORG_CONSTRAINT
    )


@pytest.mark.asyncio
async def test_email_missing_is_not_allowed(domain_check: Check) -> None:
    assert (
        await domain_check.reason(domain_check.token({"email": None}))
        is Reason.TOKEN_ORG_CONSTRAINT
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("verified", [False, None, "false", 1])
async def test_email_not_verified(domain_check: Check, verified: object) -> None:
    token = domain_check.token({"email_verified": verified})
    assert await domain_check.reason(token) is Reason.TOKEN_EMAIL_UNVERIFIED


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("config", "claims"),
    [
        ({"hosted_domain": "example.com"}, {"hd": "evil.com"}),
        ({"hosted_domain": "example.com"}, {}),
        ({"tenant_id": "1111-aaaa"}, {"tid": "2222-bbbb"}),
        ({"tenant_id": "1111-aaaa"}, {}),
    ],
)
async def test_hd_or_tid_mismatch(
    idp: TestIdentityProvider, clock: FixedClock, config: IdpOverrides, claims: dict[str, object]
) -> None:
    check = Check(idp, clock, **config)
    assert await check.reason(check.token(claims)) is Reason.TOKEN_ORG_CONSTRAINT


@pytest.mark.asyncio
async def test_hd_and_tid_match(idp: TestIdentityProvider, clock: FixedClock) -> None:
    check = Check(idp, clock, hosted_domain="example.com", tenant_id="1111-AAAA")
    assert await check.verify(check.token({"hd": "example.com", "tid": "1111-aaaa"}))


# --- time ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("claim", ["iat", "nbf"])
async def test_issued_in_the_future(check: Check, claim: str) -> None:
    assert await check.verify(check.token({claim: int(NOW) + 60}))  # inside the leeway
    token = check.token({claim: int(NOW) + 61, "exp": int(NOW) + 900})
    assert await check.reason(token) is Reason.TOKEN_NOT_YET_VALID


@pytest.mark.asyncio
async def test_expired_without_refresh(check: Check) -> None:
    token = check.token()
    check.clock.advance(600 + 59)  # inside the leeway
    assert await check.verify(token)
    check.clock.advance(1)
    assert await check.reason(token) is Reason.TOKEN_EXPIRED


@pytest.mark.asyncio
async def test_expired_with_a_valid_refreshed_token(check: Check) -> None:
    token = check.token()
    check.clock.advance(3000)
    token.refreshed_id_token = check.idp.refreshed_token(
        sub="alice-sub", issued_at=check.clock.now(), lifetime_s=600, groups=["ops"]
    )
    identity = await check.verify(token)
    assert identity.session_started_at == NOW
    assert identity.expires_at == NOW + 3600
    assert identity.groups == ("ops",)
    assert "nonce" not in identity.claims


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("sub", "changes"),
    [
        ("bob-sub", {}),
        ("alice-sub", {"iss": "https://evil.example.com"}),
        ("alice-sub", {"aud": "another-client"}),
        ("alice-sub", {"aud": ["another-client", "third"], "azp": "another-client"}),
    ],
)
async def test_refreshed_token_for_another_subject_issuer_or_audience(
    check: Check, sub: str, changes: dict[str, object]
) -> None:
    token = check.token()
    check.clock.advance(3000)
    claims = check.idp.id_token_claims(sub=sub, issued_at=check.clock.now(), extra_claims=changes)
    token.refreshed_id_token = check.idp.mint(claims)
    assert await check.reason(token) is Reason.TOKEN_REFRESH_MISMATCH


@pytest.mark.asyncio
async def test_refreshed_token_with_several_audiences_needs_azp(check: Check) -> None:
    token = check.token()
    token.refreshed_id_token = check.idp.refreshed_token(
        issued_at=NOW, aud=["zli", "another-client"]
    )
    assert await check.reason(token) is Reason.TOKEN_AZP_MISMATCH


@pytest.mark.asyncio
async def test_refreshed_token_expired(check: Check) -> None:
    token = check.token()
    token.refreshed_id_token = check.idp.refreshed_token(issued_at=NOW + 100, lifetime_s=600)
    check.clock.advance(761)
    assert await check.reason(token) is Reason.TOKEN_EXPIRED


def _refreshed(idp: TestIdentityProvider, kind: str) -> str:
    claims = idp.id_token_claims(issued_at=NOW + 100)
    if kind == "malformed":
        return "a.b"
    if kind == "bad signature":
        return idp.mint(claims).rpartition(".")[0] + "." + _b64(b"forged" * 40)
    if kind == "unpublished key":
        return idp.mint(claims, key="rsa-unpublished")
    return idp.mint(claims, alg=kind)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("none", Reason.TOKEN_ALG_NOT_ALLOWED),
        ("HS256", Reason.TOKEN_ALG_NOT_ALLOWED),
        ("unpublished key", Reason.TOKEN_UNKNOWN_KEY),
        ("bad signature", Reason.TOKEN_BAD_SIGNATURE),
        ("malformed", Reason.TOKEN_MALFORMED),
    ],
)
async def test_refreshed_token_is_verified_like_the_first(
    check: Check, kind: str, reason: Reason
) -> None:
    token = check.token()
    token.refreshed_id_token = _refreshed(check.idp, kind)
    check.clock.advance(3000)
    assert await check.reason(token) is reason


@pytest.mark.asyncio
async def test_refreshed_token_must_meet_the_organisation_constraint(
    domain_check: Check,
) -> None:
    token = domain_check.token()
    token.refreshed_id_token = domain_check.idp.refreshed_token(
        issued_at=NOW, email="alice@evil.com"
    )
    assert await domain_check.reason(token) is Reason.TOKEN_ORG_CONSTRAINT


@pytest.mark.asyncio
async def test_refreshed_token_issued_in_the_future(check: Check) -> None:
    token = check.token()
    token.refreshed_id_token = check.idp.refreshed_token(issued_at=NOW + 120)
    assert await check.reason(token) is Reason.TOKEN_NOT_YET_VALID


@pytest.mark.asyncio
async def test_session_older_than_the_maximum_age(
    idp: TestIdentityProvider, clock: FixedClock
) -> None:
    check = Check(idp, clock, max_session_age_s=3600.0)
    token = check.token()
    clock.advance(3599)
    token.refreshed_id_token = idp.refreshed_token(issued_at=clock.now())
    assert (await check.verify(token)).session_started_at == NOW
    clock.advance(1)
    assert await check.reason(token) is Reason.TOKEN_SESSION_TOO_OLD


@pytest.mark.asyncio
async def test_maximum_age_holds_for_a_long_lived_first_token(
    idp: TestIdentityProvider, clock: FixedClock
) -> None:
    check = Check(idp, clock, max_session_age_s=3600.0)
    token = check.token({"exp": int(NOW) + 24 * 3600})
    clock.advance(3600)
    assert await check.reason(token) is Reason.TOKEN_SESSION_TOO_OLD


# --- any input ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_check(idp: TestIdentityProvider) -> Check:
    """A verifier with the JWKS in memory, so hypothesis examples make no HTTP requests."""
    return Check(idp, FixedClock(NOW), idp.static_jwks_source())


@settings(max_examples=200, deadline=None)
@given(
    id_token=st.text(max_size=300)
    | st.lists(st.text("abcAB-_019=.", max_size=60), min_size=3, max_size=4).map(".".join)
)
def test_any_id_token_text_is_refused_with_a_reason(static_check: Check, id_token: str) -> None:
    token = mrzap_pb2.PkToken(id_token=id_token, upk=UPK, rz="ab" * 32)
    with pytest.raises(VerificationError) as caught:
        asyncio.run(static_check.verify(token))
    assert caught.value.reason in (Reason.TOKEN_MALFORMED, Reason.TOKEN_ALG_NOT_ALLOWED)
