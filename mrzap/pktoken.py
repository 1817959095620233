"""PK tokens: ID tokens whose nonce commits to the client's session key (PROTOCOL.md section 3).

zli makes client instance claims (CIC) for its per-login Ed25519 key `upk` and a random `rz`, and
logs in with `nonce = base64url_nopad(SHA-256(CIC JSON))`. The IdP signs that nonce into the ID
token, so the token vouches for `upk`. `PkTokenVerifier` checks a `PkToken` the way section 3
lists, and raises a `VerificationError` whose reason names the first check that failed:

1. the JWS is well formed (`TOKEN_MALFORMED`);
2. `alg` is in the configured allowlist, never `none` or HMAC (`TOKEN_ALG_NOT_ALLOWED`);
3. the key named by `kid` is in the *pinned* issuer's JWKS and fits `alg` (`TOKEN_UNKNOWN_KEY`,
   `TOKEN_JWKS_UNAVAILABLE`), and the signature verifies with it (`TOKEN_BAD_SIGNATURE`);
4. `iss`, `aud` and `azp` name the pinned issuer and client (`TOKEN_WRONG_ISSUER`,
   `TOKEN_WRONG_AUDIENCE`, `TOKEN_AZP_MISMATCH`);
5. `nonce` is the commitment to the token's `upk` and `rz` (`TOKEN_NONCE_MISMATCH`);
6. the organisation constraint holds (`TOKEN_EMAIL_UNVERIFIED`, `TOKEN_ORG_CONSTRAINT`);
7. `iat` and `nbf` are not in the future (`TOKEN_NOT_YET_VALID`);
8. freshness: the ID token is unexpired, or a refreshed ID token for the same `iss`, `sub` and
   audience verifies the same way and is unexpired (`TOKEN_REFRESH_MISMATCH`, `TOKEN_EXPIRED`),
   and the session, counted from the first token's `iat`, is younger than the maximum session
   age (`TOKEN_SESSION_TOO_OLD`).

The JWS is parsed and its signature checked by PyJWT; every claim check is done here, so that each
has its own reason. Encoding choice: the CIC's `upk` is base64url *without* padding, like every
other base64url value in JOSE (RFC 7515 section 2); section 3 of PROTOCOL.md does not say, and a
verifier must pick exactly one encoding for the commitment to be binding.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import re
import secrets
from collections.abc import Mapping
from types import MappingProxyType

import jwt
from jwt.api_jws import PyJWS

from bastion.mrzap.v1 import mrzap_pb2

from .clock import Clock, SystemClock
from .config import IdpConfig
from .errors import InvalidArgument
from .jwks import JwksSource
from .verification import Reason, VerificationError

__all__ = [
    "ClientInstanceClaims",
    "PkTokenVerifier",
    "VerifiedIdentity",
    "base64url_nopad",
    "nonce_for",
]

#: Length of the raw Ed25519 public key committed in the nonce.
UPK_LENGTH = 32
#: Largest ID token accepted; real ones are 1-3 KiB, and the SYN is at most 64 KiB anyway.
MAX_TOKEN_LENGTH = 16 * 1024

_RZ = re.compile(r"[0-9a-f]{64}")
# Compact JWS: three base64url segments without padding (the signature may be empty only for
# `alg: none`, which is refused later with its own reason).
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_HEADER_ALG_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    # alg: (kty, crv) of the only keys that may verify it.
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
}


def base64url_nopad(data: bytes) -> str:
    """base64url of `data` without `=` padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _check_cic(upk: bytes, rz: str) -> None:
    if len(upk) != UPK_LENGTH:
        raise InvalidArgument(f"upk must be a raw {UPK_LENGTH}-byte Ed25519 key, got {len(upk)}")
    if not _RZ.fullmatch(rz):
        raise InvalidArgument("rz must be 64 lowercase hex characters")


def nonce_for(upk: bytes, rz: str) -> str:
    """The nonce that commits to `upk` and `rz`: base64url_nopad(SHA-256(CIC JSON))."""
    return ClientInstanceClaims(upk, rz).nonce()


@dataclasses.dataclass(frozen=True)
class ClientInstanceClaims:
    """The client instance claims a login commits to (PROTOCOL.md section 3)."""

    upk: bytes
    """The raw 32-byte Ed25519 public key of the client session."""

    rz: str
    """64 lowercase hex characters of 32 random bytes, so equal keys never give equal nonces."""

    def __post_init__(self) -> None:
        _check_cic(self.upk, self.rz)

    @classmethod
    def generate(cls, upk: bytes) -> ClientInstanceClaims:
        """Claims for `upk` with fresh randomness."""
        return cls(upk, secrets.token_hex(32))

    def to_json(self) -> bytes:
        """The CIC as JSON with sorted keys and no spaces: the exact bytes that are hashed."""
        cic = {"alg": "EdDSA", "rz": self.rz, "upk": base64url_nopad(self.upk)}
        return json.dumps(cic, sort_keys=True, separators=(",", ":")).encode("ascii")

    def nonce(self) -> str:
        """The OIDC nonce to log in with."""
        return base64url_nopad(hashlib.sha256(self.to_json()).digest())


@dataclasses.dataclass(frozen=True)
class VerifiedIdentity:
    """Who a verified PK token names, and for how long it is good."""

    iss: str
    """The issuer (always the pinned issuer)."""

    sub: str
    """The IdP's stable identifier of the user."""

    email: str
    """The `email` claim of the fresh token, or "" without one; trust it only if verified."""

    email_verified: bool
    """Whether the IdP says it verified `email`."""

    groups: tuple[str, ...]
    """The `groups` claim of the fresh token, if it is a list of strings; else empty."""

    upk: bytes
    """The client session key the token is bound to."""

    session_started_at: float
    """`iat` of the first ID token: when the login session began."""

    expires_at: float
    """`exp` of the token that made the PK token fresh (the refreshed one, if present)."""

    claims: Mapping[str, object]
    """All claims of the fresh token, read-only."""


def _reject(reason: Reason, message: str) -> VerificationError:
    return VerificationError(reason, message)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for name, value in pairs:
        if name in result:
            # Two parsers that keep different duplicates would read different claims.
            raise ValueError(f"duplicate member {name!r}")
        result[name] = value
    return result


def _number(claims: Mapping[str, object], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _reject(Reason.TOKEN_MALFORMED, f"claim {name!r} must be a number")
    return float(value)


def _string(claims: Mapping[str, object], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise _reject(Reason.TOKEN_MALFORMED, f"claim {name!r} must be a non-empty string")
    return value


def _audiences(claims: Mapping[str, object]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        return [str(a) for a in aud]
    raise _reject(Reason.TOKEN_MALFORMED, "claim 'aud' must be a string or a list of strings")


def _is_true(value: object) -> bool:
    # Some IdPs (e.g. Amazon Cognito) send booleans as JSON strings.
    return value is True or value == "true"


@dataclasses.dataclass(frozen=True)
class _Jws:
    header: Mapping[str, object]
    claims: Mapping[str, object]


class PkTokenVerifier:
    """Checks PK tokens against one identity provider configuration (PROTOCOL.md section 3).

    Signing keys are looked up for the configured (pinned) issuer only, never for the issuer a
    token claims, so a token can never choose where its key comes from.
    """

    def __init__(self, config: IdpConfig, jwks: JwksSource, clock: Clock | None = None) -> None:
        self._config = config
        self._jwks = jwks
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._jws = PyJWS()

    @property
    def config(self) -> IdpConfig:
        """The IdP configuration tokens are checked against."""
        return self._config

    async def verify(self, token: mrzap_pb2.PkToken) -> VerifiedIdentity:
        """Check every rule of section 3; raise VerificationError at the first one that fails."""
        config = self._config
        if len(token.upk) != UPK_LENGTH:
            raise _reject(Reason.TOKEN_MALFORMED, f"upk must have {UPK_LENGTH} bytes")
        if not _RZ.fullmatch(token.rz):
            raise _reject(Reason.TOKEN_MALFORMED, "rz must be 64 lowercase hex characters")

        first = await self._verified_jws(token.id_token, "ID token")
        claims = first.claims
        if claims.get("iss") != config.issuer:
            raise _reject(Reason.TOKEN_WRONG_ISSUER, "ID token is from another issuer")
        self._check_audience(claims, Reason.TOKEN_WRONG_AUDIENCE, "ID token")
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not secrets.compare_digest(
            nonce.encode(), nonce_for(token.upk, token.rz).encode()
        ):
            raise _reject(Reason.TOKEN_NONCE_MISMATCH, "ID token nonce does not commit to upk/rz")
        self._check_org(claims)
        sub = _string(claims, "sub")
        now = self._clock.now()
        started_at = self._check_times(claims, now, "ID token")

        fresh = claims
        if token.refreshed_id_token:
            refreshed = await self._verified_jws(token.refreshed_id_token, "refreshed ID token")
            fresh = refreshed.claims
            if fresh.get("iss") != config.issuer:
                raise _reject(Reason.TOKEN_REFRESH_MISMATCH, "refreshed token has another issuer")
            if fresh.get("sub") != sub:
                raise _reject(Reason.TOKEN_REFRESH_MISMATCH, "refreshed token has another subject")
            self._check_audience(fresh, Reason.TOKEN_REFRESH_MISMATCH, "refreshed token")
            self._check_org(fresh)
            self._check_times(fresh, now, "refreshed token")
        expires_at = _number(fresh, "exp")
        if now >= expires_at + config.leeway_s:
            which = "refreshed token" if token.refreshed_id_token else "ID token"
            raise _reject(Reason.TOKEN_EXPIRED, f"{which} has expired")
        if now - started_at >= config.max_session_age_s:
            raise _reject(
                Reason.TOKEN_SESSION_TOO_OLD,
                "the login session is older than the maximum session age: log in again",
            )

        email = fresh.get("email")
        groups = fresh.get("groups")
        return VerifiedIdentity(
            iss=config.issuer,
            sub=sub,
            email=email if isinstance(email, str) else "",
            email_verified=_is_true(fresh.get("email_verified")),
            groups=tuple(groups) if isinstance(groups, list) and _all_str(groups) else (),
            upk=bytes(token.upk),
            session_started_at=started_at,
            expires_at=expires_at,
            claims=MappingProxyType(dict(fresh)),
        )

    async def _verified_jws(self, token: str, what: str) -> _Jws:
        """Parse `token`, check its algorithm, find its key and check its signature."""
        jws = self._parse(token, what)
        alg = jws.header.get("alg")
        if (
            not isinstance(alg, str)
            or alg not in self._config.allowed_algorithms
            or alg.lower() == "none"
            or alg.upper().startswith("HS")
        ):
            raise _reject(Reason.TOKEN_ALG_NOT_ALLOWED, f"{what} algorithm {alg!r} is not allowed")
        kid = jws.header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _reject(Reason.TOKEN_MALFORMED, f"{what} 'kid' must be a string")
        key = await self._jwks.signing_key(self._config.issuer, kid)
        key = _key_for_alg(key, alg, what)
        try:
            self._jws.decode_complete(
                token,
                key=key,
                algorithms=[alg],
                options={"verify_signature": True, "enforce_minimum_key_length": True},
            )
        except jwt.InvalidKeyError:
            raise _reject(Reason.TOKEN_UNKNOWN_KEY, f"{what} key is not usable") from None
        except jwt.PyJWTError:
            raise _reject(Reason.TOKEN_BAD_SIGNATURE, f"{what} signature does not verify") from None
        return jws

    def _parse(self, token: str, what: str) -> _Jws:
        if len(token) > MAX_TOKEN_LENGTH or not _COMPACT_JWS.fullmatch(token):
            raise _reject(Reason.TOKEN_MALFORMED, f"{what} is not a compact JWS")
        try:
            parsed = self._jws.decode_complete(token, options={"verify_signature": False})
            claims = json.loads(parsed["payload"], object_pairs_hook=_no_duplicates)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _reject(Reason.TOKEN_MALFORMED, f"{what} is not a well-formed JWS") from None
        header = parsed["header"]
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _reject(Reason.TOKEN_MALFORMED, f"{what} header and payload must be objects")
        return _Jws(header, claims)

    def _check_audience(self, claims: Mapping[str, object], reason: Reason, what: str) -> None:
        client_id = self._config.client_id
        audiences = _audiences(claims)
        if client_id not in audiences:
            raise _reject(reason, f"{what} is not for client {client_id!r}")
        # OIDC Core 3.1.3.7: with several audiences, the authorized party must be this client.
        if len(audiences) > 1 and claims.get("azp") != client_id:
            raise _reject(Reason.TOKEN_AZP_MISMATCH, f"{what} 'azp' is not {client_id!r}")

    def _check_org(self, claims: Mapping[str, object]) -> None:
        config = self._config
        if config.allowed_email_domains:
            email = claims.get("email")
            if not _is_true(claims.get("email_verified")):
                raise _reject(Reason.TOKEN_EMAIL_UNVERIFIED, "the IdP has not verified the email")
            local, at, domain = email.rpartition("@") if isinstance(email, str) else ("", "", "")
            if not (local and at) or domain.lower() not in config.allowed_email_domains:
                raise _reject(Reason.TOKEN_ORG_CONSTRAINT, "email domain is not allowed")
        if config.hosted_domain is not None and not _same(claims.get("hd"), config.hosted_domain):
            raise _reject(Reason.TOKEN_ORG_CONSTRAINT, "'hd' is not the organisation's domain")
        if config.tenant_id is not None and not _same(claims.get("tid"), config.tenant_id):
            raise _reject(Reason.TOKEN_ORG_CONSTRAINT, "'tid' is not the organisation's tenant")

    def _check_times(self, claims: Mapping[str, object], now: float, what: str) -> float:
        """Check `iat` and `nbf` are not in the future and `exp` is a number; return `iat`."""
        _number(claims, "exp")  # required even when a refreshed token decides freshness
        iat = _number(claims, "iat")
        nbf = _number(claims, "nbf") if "nbf" in claims else None
        limit = now + self._config.leeway_s
        if iat > limit or (nbf is not None and nbf > limit):
            raise _reject(Reason.TOKEN_NOT_YET_VALID, f"{what} is not valid yet")
        return iat


def _all_str(values: list[object]) -> bool:
    return all(isinstance(v, str) for v in values)


def _same(value: object, expected: str) -> bool:
    # Domains and tenant GUIDs are case-insensitive.
    return isinstance(value, str) and value.lower() == expected.lower()


def _key_for_alg(key: jwt.PyJWK, alg: str, what: str) -> jwt.PyJWK:
    """`key` bound to `alg`, if the JWK's own `kty`, `crv`, `alg` and `use` allow that."""
    # PyJWK keeps the JWK's members only in `_jwk_data` (stable since PyJWT 2.0).
    jwk: Mapping[str, object] = key._jwk_data
    kty, crv = _HEADER_ALG_KEY_TYPES.get(alg, ("", None))
    fits = (
        jwk.get("kty") == kty
        and (crv is None or jwk.get("crv") == crv)
        and jwk.get("alg") in (None, alg)
        and jwk.get("use") in (None, "sig")
    )
    if not fits:
        raise _reject(Reason.TOKEN_UNKNOWN_KEY, f"{what} key {key.key_id!r} is not a key for {alg}")
    if key.algorithm_name == alg:
        return key
    try:
        # A JWK without `alg` (e.g. an RSA key used for PS256) is bound to the header's algorithm.
        return jwt.PyJWK(dict(jwk), algorithm=alg)
    except jwt.PyJWTError:
        raise _reject(Reason.TOKEN_UNKNOWN_KEY, f"{what} key is not usable for {alg}") from None
