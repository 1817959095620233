"""Test helpers for the protocol core: a movable clock and a real OIDC IdP on loopback.

`TestIdentityProvider` is a small but real IdP for the parts PK token verification touches: it
serves OIDC discovery and a JWKS over HTTP on 127.0.0.1 (so `HttpJwksSource` is tested the way it
runs), and signs ID tokens with real RSA and EC keys. It can also craft the tokens an attacker
would send (`alg: none`, HS256 signed with the public key, a key the JWKS does not publish).

    with TestIdentityProvider() as idp:
        verifier = PkTokenVerifier(idp.config(), HttpJwksSource(clock), clock)
        identity = await verifier.verify(idp.pk_token(upk, issued_at=clock.now()))
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TypedDict, Unpack

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from bastion.mrzap.v1 import mrzap_pb2

from .config import IdpConfig
from .jwks import StaticJwksSource
from .pktoken import ClientInstanceClaims, base64url_nopad

__all__ = ["FixedClock", "IdpOverrides", "TestIdentityProvider"]

_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class FixedClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        """The current (fixed) time, in seconds since the Unix epoch."""
        return self._now

    def set(self, t: float) -> None:
        """Jump to `t`."""
        self._now = t

    def advance(self, seconds: float) -> None:
        """Move forward by `seconds`."""
        self._now += seconds


class IdpOverrides(TypedDict, total=False):
    """Fields of `IdpConfig` a test may set besides the issuer and client id."""

    allowed_email_domains: frozenset[str]
    hosted_domain: str | None
    tenant_id: str | None
    allowed_algorithms: frozenset[str]
    max_session_age_s: float
    leeway_s: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    provider: TestIdentityProvider


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        provider = self.server.provider
        if not provider.available:
            self._send(503, {"error": "temporarily_unavailable"})
        elif self.path == "/.well-known/openid-configuration":
            provider._count("discovery")
            self._send(200, provider.discovery())
        elif self.path == "/jwks":
            provider._count("jwks")
            self._send(200, provider.jwks())
        else:
            self._send(404, {"error": "not_found"})

    def _send(self, status: int, document: Mapping[str, object]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


class TestIdentityProvider:
    """A real OIDC IdP on 127.0.0.1: discovery, JWKS, and ID tokens signed with RSA and EC keys.

    Keys: "rsa-1" (RS256, RSA-2048) and "ec-1" (ES256, P-256) are published; "rsa-unpublished"
    signs tokens but is not in the JWKS. `rotate()` publishes one more RSA key. Use it as a context
    manager: the HTTP server runs from `__enter__` to `__exit__`.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, client_id: str = "zli") -> None:
        """Generate the keys; `client_id` is the audience of the tokens it mints by default."""
        self.client_id = client_id
        self.available = True
        """When False, every HTTP request gets 503, as from an IdP that is down."""
        self.jwks_requests = 0
        """How many times the JWKS was fetched."""
        self.discovery_requests = 0
        """How many times the discovery document was fetched."""
        self._keys: dict[str, _PrivateKey] = {
            "rsa-1": _new_rsa_key(),
            "ec-1": ec.generate_private_key(ec.SECP256R1()),
            "rsa-unpublished": _new_rsa_key(),
        }
        self._published = ["rsa-1", "ec-1"]
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TestIdentityProvider:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.provider = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="test-idp", kwargs={"poll_interval": 0.05}
        )
        self._thread.daemon = True
        self._thread.start()
        port = server.server_address[1]
        self._issuer = f"http://127.0.0.1:{port}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    @property
    def issuer(self) -> str:
        """The issuer URL, `http://127.0.0.1:<port>` (set once the server runs)."""
        try:
            return self._issuer
        except AttributeError:
            raise RuntimeError("enter the TestIdentityProvider's context first") from None

    def _count(self, what: str) -> None:
        with self._lock:
            if what == "jwks":
                self.jwks_requests += 1
            else:
                self.discovery_requests += 1

    # --- documents ------------------------------------------------------------------------------

    def discovery(self) -> dict[str, object]:
        """The OIDC discovery document."""
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }

    def jwks(self) -> dict[str, object]:
        """The published JWKS (public keys only)."""
        with self._lock:
            published = list(self._published)
        return {"keys": [self.public_jwk(kid) for kid in published]}

    def public_jwk(self, kid: str) -> dict[str, object]:
        """The public JWK of key `kid`, with `kid`, `alg` and `use`."""
        key = self._keys[kid]
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {**jwk, "kid": kid, "alg": _default_alg(key), "use": "sig"}

    def public_key_pem(self, kid: str = "rsa-1") -> bytes:
        """The public key `kid` as SubjectPublicKeyInfo PEM."""
        return (
            self._keys[kid]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def rotate(self) -> str:
        """Publish a new RSA key (RS256); return its kid. Old keys stay published."""
        with self._lock:
            kid = f"rsa-{len(self._keys)}"
            self._keys[kid] = _new_rsa_key()
            self._published.append(kid)
        return kid

    def config(self, client_id: str = "zli", **overrides: Unpack[IdpOverrides]) -> IdpConfig:
        """An IdpConfig pinning this IdP and `client_id`."""
        return IdpConfig(issuer=self.issuer, client_id=client_id, **overrides)

    def static_jwks_source(self) -> StaticJwksSource:
        """A JWKS source holding the keys published now; it makes no HTTP requests."""
        return StaticJwksSource({self.issuer: self.jwks()})

    # --- tokens ---------------------------------------------------------------------------------

    def mint(
        self,
        claims: Mapping[str, object],
        *,
        key: str = "rsa-1",
        headers: Mapping[str, object] | None = None,
        alg: str | None = None,
    ) -> str:
        """A compact JWS of `claims` signed with key `key` (raw; nothing is checked).

        The header has `kid` = `key` unless `headers` changes it (a None value removes a member).
        `alg` defaults to the key's algorithm. `alg="none"` gives an unsigned token, and "HS256"
        an HMAC with the RSA public key PEM as secret: the classic key-confusion attack.
        """
        payload = json.dumps(dict(claims), separators=(",", ":")).encode()
        return self.mint_raw(payload, key=key, headers=headers, alg=alg)

    def mint_raw(
        self,
        payload: bytes,
        *,
        key: str = "rsa-1",
        headers: Mapping[str, object] | None = None,
        alg: str | None = None,
    ) -> str:
        """Like `mint`, with the exact payload bytes (for payloads `json.dumps` would not make)."""
        private = self._keys[key]
        alg = alg or _default_alg(private)
        header: dict[str, object] = {"alg": alg, "typ": "JWT", "kid": key}
        for name, value in (headers or {}).items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        signing_input = f"{_b64_json(header)}.{base64url_nopad(payload)}".encode()
        if alg == "none":
            signature = b""
        elif alg.startswith("HS"):
            rsa_kid = key if isinstance(private, rsa.RSAPrivateKey) else "rsa-1"
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}.get(alg, hashlib.sha512)
            signature = hmac.new(self.public_key_pem(rsa_kid), signing_input, digest).digest()
        else:
            signature = jwt.get_algorithm_by_name(alg).sign(signing_input, private)
        return f"{signing_input.decode()}.{base64url_nopad(signature)}"

    def id_token_claims(
        self,
        *,
        sub: str = "alice-sub",
        email: str = "alice@example.com",
        issued_at: float | None = None,
        lifetime_s: float = 600,
        nonce: str | None = None,
        extra_claims: Mapping[str, object] | None = None,
    ) -> dict[str, object]:
        """The claims of an ID token from this IdP; `extra_claims` override (None removes)."""
        iat = int(time.time() if issued_at is None else issued_at)
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.client_id,
            "email": email,
            "email_verified": True,
            "iat": iat,
            "exp": iat + int(lifetime_s),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def pk_token(
        self,
        upk: bytes,
        *,
        sub: str = "alice-sub",
        email: str = "alice@example.com",
        issued_at: float | None = None,
        lifetime_s: float = 600,
        extra_claims: Mapping[str, object] | None = None,
        key: str = "rsa-1",
    ) -> mrzap_pb2.PkToken:
        """A PK token for session key `upk`: an ID token whose nonce commits to `upk` and a new rz.

        `issued_at` defaults to the real time; pass the test clock's time when using FixedClock.
        """
        cic = ClientInstanceClaims.generate(upk)
        claims = self.id_token_claims(
            sub=sub,
            email=email,
            issued_at=issued_at,
            lifetime_s=lifetime_s,
            nonce=cic.nonce(),
            extra_claims=extra_claims,
        )
        return mrzap_pb2.PkToken(id_token=self.mint(claims, key=key), upk=cic.upk, rz=cic.rz)

    def refreshed_token(
        self,
        sub: str = "alice-sub",
        *,
        email: str | None = None,
        issued_at: float | None = None,
        lifetime_s: float = 600,
        key: str = "rsa-1",
        **claims: object,
    ) -> str:
        """A refreshed ID token (no nonce) for `sub`; `claims` override (None removes).

        `email` defaults to `<sub without "-sub">@example.com`.
        """
        return self.mint(
            self.id_token_claims(
                sub=sub,
                email=email if email is not None else f"{sub.removesuffix('-sub')}@example.com",
                issued_at=issued_at,
                lifetime_s=lifetime_s,
                extra_claims=claims,
            ),
            key=key,
        )


def _new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _default_alg(key: _PrivateKey) -> str:
    return "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"


def _b64_json(document: Mapping[str, object]) -> str:
    return base64url_nopad(json.dumps(document, separators=(",", ":")).encode())
