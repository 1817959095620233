"""In-memory, thread-safe state of the IdP: authorization codes, tokens and used nonces.

Nothing here survives a restart, which is what a development IdP wants: restarting logs everyone
out. Codes and tokens are kept under their SHA-256, never in clear, so a memory dump or a
debugger shows nothing that can be replayed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = ["CodeRecord", "GrantStore", "TokenRecord"]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CodeRecord:
    """What an authorization code was issued for (RFC 6749 §4.1.2, OIDC Core §3.1.2.5)."""

    client_id: str
    redirect_uri: str
    scope: str
    nonce: str
    code_challenge: str
    code_challenge_method: str
    username: str
    auth_time: int
    expires_at: float
    family: str
    """Identifies every token issued from this code, to revoke them all if the code is replayed."""
    used: bool = False


@dataclass(frozen=True)
class TokenRecord:
    """An issued access token or refresh token and the login it belongs to."""

    client_id: str
    username: str
    scope: str
    auth_time: int
    expires_at: float
    session_expires_at: float
    """When the login can no longer be refreshed; refresh-token rotation keeps it."""
    family: str
    revoked: bool = False


class GrantStore:
    """Codes, tokens and nonces, each expiring on its own; one lock guards them all."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._codes: dict[str, CodeRecord] = {}
        self._access: dict[str, TokenRecord] = {}
        self._refresh: dict[str, TokenRecord] = {}
        self._nonces: dict[tuple[str, str], float] = {}

    def now(self) -> float:
        """The store's clock, in seconds since the epoch."""
        return self._clock()

    def _purge(self, now: float) -> None:
        self._codes = {k: v for k, v in self._codes.items() if v.expires_at > now}
        self._access = {k: v for k, v in self._access.items() if v.expires_at > now}
        self._refresh = {k: v for k, v in self._refresh.items() if v.expires_at > now}
        self._nonces = {k: v for k, v in self._nonces.items() if v > now}

    def put_code(self, code: str, record: CodeRecord, nonce_expires_at: float) -> None:
        """Keep a new code, and remember its nonce until `nonce_expires_at` so a replayed
        authorization request is refused while any ID token carrying that nonce could live."""
        with self._lock:
            self._purge(self.now())
            self._codes[_digest(code)] = record
            self._nonces[(record.client_id, record.nonce)] = nonce_expires_at

    def take_code(self, code: str, client_id: str) -> CodeRecord | None:
        """Redeem a code once. A second redemption returns None and revokes every token issued
        from the code (RFC 6749 §4.1.2: the code may have been stolen)."""
        key = _digest(code)
        with self._lock:
            record = self._codes.get(key)
            if record is None or record.client_id != client_id:
                return None
            if record.expires_at <= self.now():
                return None
            if record.used:
                self._revoke_family(record.family)
                return None
            self._codes[key] = replace(record, used=True)
            return record

    def _revoke_family(self, family: str) -> None:
        for table in (self._access, self._refresh):
            for key, record in table.items():
                if record.family == family:
                    table[key] = replace(record, revoked=True)

    def nonce_seen(self, client_id: str, nonce: str) -> bool:
        """Whether a code was already issued to `client_id` with this nonce (and still counts)."""
        with self._lock:
            expires_at = self._nonces.get((client_id, nonce))
            return expires_at is not None and expires_at > self.now()

    def put_tokens(
        self,
        access_token: str,
        access: TokenRecord,
        refresh_token: str | None,
        refresh: TokenRecord | None,
    ) -> None:
        """Keep a newly issued access token and, if one was issued, its refresh token."""
        with self._lock:
            self._purge(self.now())
            self._access[_digest(access_token)] = access
            if refresh_token is not None and refresh is not None:
                self._refresh[_digest(refresh_token)] = refresh

    def find_access_token(self, token: str) -> TokenRecord | None:
        """The live (unexpired, unrevoked) access token record, if any."""
        with self._lock:
            record = self._access.get(_digest(token))
        if record is None or record.revoked or record.expires_at <= self.now():
            return None
        return record

    def take_refresh_token(self, token: str, client_id: str) -> TokenRecord | None:
        """Redeem a refresh token once: it is revoked as it is returned, and the caller issues a
        new one (rotation). Presenting a rotated-out token again revokes the whole login, since
        one of the two presenters must have stolen it (OAuth 2.0 Security BCP, RFC 9700 §4.14)."""
        key = _digest(token)
        with self._lock:
            record = self._refresh.get(key)
            if record is None or record.client_id != client_id:
                return None
            if record.expires_at <= self.now():
                return None
            if record.revoked:
                self._revoke_family(record.family)
                return None
            self._refresh[key] = replace(record, revoked=True)
            return record
