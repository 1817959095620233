"""Where ID token signing keys come from: the pinned issuer's JWKS (PROTOCOL.md sections 1 and 3).

Agents and the broker fetch the JWKS from the issuer themselves, never through another party:
`HttpJwksSource` reads `{issuer}/.well-known/openid-configuration`, follows its `jwks_uri`
(https, or http on a loopback address only) and caches both per issuer. A `kid` it does not know
triggers a refetch of the JWKS at most once per `min_refetch_interval_s` per issuer (section 3),
so a flood of tokens with made-up key ids cannot turn a verifier into a load generator against
the IdP. `StaticJwksSource` serves fixed key sets, for in-process use and tests.

Tokens never reach this module; log lines name only issuers, URLs and key ids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import ipaddress
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import IO, Protocol
from urllib.parse import urlsplit

import jwt

from .clock import Clock, SystemClock
from .verification import Reason, VerificationError

__all__ = ["HttpJwksSource", "JwksSource", "KeySet", "StaticJwksSource"]

_log = logging.getLogger(__name__)

#: Largest discovery document or JWKS read; real ones are a few KiB.
MAX_DOCUMENT_BYTES = 1024 * 1024


class JwksSource(Protocol):
    """Finds the key an issuer signs ID tokens with."""

    async def signing_key(self, issuer: str, kid: str | None) -> jwt.PyJWK:
        """The issuer's published key with key id `kid` (with `None`: its only key).

        Raises VerificationError with TOKEN_UNKNOWN_KEY if the issuer publishes no such key, and
        TOKEN_JWKS_UNAVAILABLE if its keys cannot be fetched.
        """
        ...


@dataclasses.dataclass(frozen=True)
class KeySet:
    """The usable signing keys of one JWKS document."""

    by_kid: Mapping[str, jwt.PyJWK]
    """Keys with a `kid`, by key id."""

    all_keys: tuple[jwt.PyJWK, ...]
    """Every usable key, with or without a `kid`."""

    @classmethod
    def from_jwks(cls, document: object) -> KeySet:
        """Parse a JWKS, skipping keys that cannot verify signatures.

        Skipped: symmetric (`oct`) keys, keys whose `use` is not `sig`, keys with private members,
        and keys of types or curves PyJWT does not support. Raises ValueError if `document` is not
        a JWKS at all.
        """
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("a JWKS is an object with a 'keys' list")
        by_kid: dict[str, jwt.PyJWK] = {}
        all_keys: list[jwt.PyJWK] = []
        for jwk in document["keys"]:
            key = _signing_key(jwk)
            if key is None:
                continue
            kid = key.key_id
            if kid is not None:
                if not isinstance(kid, str) or kid in by_kid:
                    _log.warning("skipping a JWKS key with a bad or repeated kid %r", kid)
                    continue
                by_kid[kid] = key
            all_keys.append(key)
        return cls(by_kid, tuple(all_keys))

    def find(self, kid: str | None) -> jwt.PyJWK | None:
        """The key with `kid`; with `kid` None, the only key if there is exactly one."""
        if kid is None:
            return self.all_keys[0] if len(self.all_keys) == 1 else None
        return self.by_kid.get(kid)


def _signing_key(jwk: object) -> jwt.PyJWK | None:
    if not isinstance(jwk, dict) or jwk.get("kty") == "oct" or jwk.get("use") not in (None, "sig"):
        return None
    if any(private in jwk for private in ("d", "p", "q", "dp", "dq", "qi", "k")):
        return None
    try:
        return jwt.PyJWK(jwk)
    except jwt.PyJWTError:
        return None


def _unknown_key(issuer: str, kid: str | None) -> VerificationError:
    return VerificationError(
        Reason.TOKEN_UNKNOWN_KEY, f"issuer {issuer} publishes no signing key {kid!r}"
    )


class StaticJwksSource:
    """Fixed JWKS documents by issuer; no network."""

    def __init__(self, jwks_by_issuer: Mapping[str, Mapping[str, object]]) -> None:
        """`jwks_by_issuer` maps an issuer URL to its JWKS (`{"keys": [...]}`)."""
        self._sets = {
            issuer: KeySet.from_jwks(dict(jwks)) for issuer, jwks in jwks_by_issuer.items()
        }

    async def signing_key(self, issuer: str, kid: str | None) -> jwt.PyJWK:
        """The key `kid` of `issuer`; TOKEN_UNKNOWN_KEY if there is none."""
        keys = self._sets.get(issuer)
        key = keys.find(kid) if keys is not None else None
        if key is None:
            raise _unknown_key(issuer, kid)
        return key


@dataclasses.dataclass
class _IssuerState:
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    jwks_uri: str | None = None
    keys: KeySet | None = None
    fetched_at: float = 0.0
    """When `keys` were fetched."""
    last_refetch: float | None = None
    """When the JWKS was last fetched again (for an unknown kid or because it was old)."""


class HttpJwksSource:
    """Fetches and caches issuers' keys over HTTPS with OIDC discovery.

    One instance serves one event loop. Concurrent lookups for an issuer share one fetch.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        timeout_s: float = 5.0,
        min_refetch_interval_s: float = 60.0,
        max_age_s: float = 3600.0,
    ) -> None:
        """Create an empty cache.

        `timeout_s` bounds each HTTP request. `min_refetch_interval_s` is the shortest time between
        two refetches of an issuer's JWKS. After `max_age_s` the JWKS is fetched again on next
        use, so keys the IdP withdrew stop working; if that fetch fails the old keys stay in use.
        """
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._timeout_s = timeout_s
        self._min_refetch_interval_s = min_refetch_interval_s
        self._max_age_s = max_age_s
        self._issuers: dict[str, _IssuerState] = {}

    async def signing_key(self, issuer: str, kid: str | None) -> jwt.PyJWK:
        """The key `kid` of `issuer`, fetching the issuer's JWKS when needed."""
        state = self._issuers.setdefault(issuer, _IssuerState())
        key = self._cached(state, kid)
        if key is not None:
            return key
        async with state.lock:
            # Another caller may have fetched while this one waited for the lock.
            key = self._cached(state, kid)
            if key is not None:
                return key
            now = self._clock.now()
            cached = state.keys
            if cached is None:
                cached = await self._fetch(issuer, state, now)
            elif self._may_refetch(state, now):
                state.last_refetch = now
                try:
                    cached = await self._fetch(issuer, state, now)
                except VerificationError:
                    if cached.find(kid) is None:
                        raise
                    _log.warning("using the cached keys of %s: fetching them again failed", issuer)
            key = cached.find(kid)
            if key is None:
                raise _unknown_key(issuer, kid)
            return key

    def _cached(self, state: _IssuerState, kid: str | None) -> jwt.PyJWK | None:
        if state.keys is None:
            return None
        now = self._clock.now()
        if now - state.fetched_at >= self._max_age_s and self._may_refetch(state, now):
            return None
        return state.keys.find(kid)

    def _may_refetch(self, state: _IssuerState, now: float) -> bool:
        last = state.last_refetch
        return last is None or now - last >= self._min_refetch_interval_s

    async def _fetch(self, issuer: str, state: _IssuerState, now: float) -> KeySet:
        if state.jwks_uri is None:
            discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
            discovery = await self._get_json(discovery_url)
            if not isinstance(discovery, dict) or discovery.get("issuer") != issuer:
                # OIDC Discovery 4.3: the document must name the issuer it was fetched for.
                raise _unavailable(issuer, "discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not _allowed_url(jwks_uri):
                raise _unavailable(issuer, "jwks_uri must be https (or http on loopback)")
            state.jwks_uri = jwks_uri
        _log.info("fetching the JWKS of %s from %s", issuer, state.jwks_uri)
        document = await self._get_json(state.jwks_uri)
        try:
            keys = KeySet.from_jwks(document)
        except ValueError:
            raise _unavailable(issuer, "the JWKS is malformed") from None
        state.keys, state.fetched_at = keys, now
        return keys

    async def _get_json(self, url: str) -> object:
        try:
            body = await asyncio.to_thread(_http_get, url, self._timeout_s)
            return json.loads(body)
        except (OSError, ValueError, http.client.HTTPException) as error:
            # URLError and HTTPError are OSErrors; their text names the URL, never a token.
            _log.warning("cannot fetch %s: %s", url, error)
            raise VerificationError(
                Reason.TOKEN_JWKS_UNAVAILABLE, f"cannot fetch {url}: {error}"
            ) from None


def _unavailable(issuer: str, message: str) -> VerificationError:
    return VerificationError(Reason.TOKEN_JWKS_UNAVAILABLE, f"issuer {issuer}: {message}")


def _allowed_url(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return bool(parts.hostname)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs a JWKS may be fetched from (no downgrade to plain http)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not _allowed_url(newurl):
            raise urllib.error.URLError(f"refusing redirect to {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _http_get(url: str, timeout_s: float) -> bytes:
    """GET `url` (blocking; run in a thread) and return at most MAX_DOCUMENT_BYTES of body."""
    if not _allowed_url(url):
        raise ValueError(f"refusing to fetch {url}: not https or loopback http")
    opener = urllib.request.build_opener(_CheckedRedirects())
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (scheme checked above)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body: bytes = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as error:
        error.close()  # the error holds the open response
        raise
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url} returned more than {MAX_DOCUMENT_BYTES} bytes")
    return body
