"""API keys: bearer credentials of service accounts (scripts, CI), managed by administrators.

A key acts as a user (or administrator) without logging in to the identity provider and without
MFA: it is a machine identity, not a person, and holds nothing a second factor could confirm.
That is why only administrators create keys, every key can expire and be revoked at once, and a
key can never create further keys (a leaked key must not outlive its own revocation).

A secret reads `mzk_<16 hex>_<43 base64url>`: the recognisable prefix lets secret scanners and
people spot it, and the first part (`mzk_<16 hex>`) is the key's public id. Only the SHA-256 of
the secret is stored; with 256 random bits in it, a slow password hash would add nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets

from mrzap.clock import Clock
from mrzap.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from mrzap.paging import decode_page_token, encode_page_token, page_limit

from ._api_key_store import ApiKey, ApiKeyStore
from ._caller import Caller

__all__ = ["API_KEY_PREFIX", "ApiKeyService", "looks_like_api_key"]

API_KEY_PREFIX = "mzk_"
_SECRET = re.compile(r"(mzk_[0-9a-f]{16})_[A-Za-z0-9_-]{43}")
_KEY_ID = re.compile(r"mzk_[0-9a-f]{16}")
MAX_NAME_LENGTH = 100
#: Longer lifetimes are almost certainly mistakes (and overflow nothing: ten years).
MAX_TTL_S = 10 * 365 * 86400.0
#: A key's last use is recorded to this precision, so busy keys do not write on every call.
LAST_USE_PRECISION_S = 60.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def looks_like_api_key(token: str) -> bool:
    """Whether a bearer token has the shape of an API key (session tokens never do)."""
    return _SECRET.fullmatch(token) is not None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clean_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidArgument("an API key needs a name that says what it is for")
    if len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise InvalidArgument(
            f"an API key's name must be printable and at most {MAX_NAME_LENGTH} characters"
        )
    return name


class ApiKeyService:
    """Creates, lists, revokes and authenticates API keys."""

    def __init__(self, store: ApiKeyStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def create(
        self, creator: Caller, name: str, *, admin: bool, ttl_s: float
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (returned this once); `ttl_s` 0 means it never expires."""
        if creator.session is None:
            raise PermissionDenied(
                "API keys cannot create API keys: an administrator must log in with `zli login`"
            )
        if not creator.is_admin:
            raise PermissionDenied("only administrators can create API keys")
        name = _clean_name(name)
        if ttl_s < 0 or ttl_s > MAX_TTL_S:
            raise InvalidArgument("an API key's lifetime must be between 0 (none) and 10 years")
        key_id = API_KEY_PREFIX + secrets.token_hex(8)
        secret = f"{key_id}_{secrets.token_urlsafe(32)}"
        now = self._clock.now()
        key = ApiKey(
            id=key_id,
            name=name,
            admin=admin,
            creator_user_id=creator.user_id,
            created_at=now,
            expires_at=now + ttl_s if ttl_s else None,
            last_used_at=None,
            revoked_at=None,
        )
        await self._store.create(key, _hash(secret))
        return key, secret

    async def list(self, page_size: int, page_token: str) -> tuple[list[ApiKey], str]:
        """A page of keys that have not been revoked (expired ones included) and the next token."""
        limit = page_limit(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        found = await self._store.list_live(decode_page_token(page_token), limit + 1)
        page = found[:limit]
        next_token = encode_page_token((page[-1].name, page[-1].id)) if len(found) > limit else ""
        return page, next_token

    async def revoke(self, caller: Caller, key_id: str) -> None:
        """Make a key unusable at once."""
        if not caller.is_admin:
            raise PermissionDenied("only administrators can revoke API keys")
        if not _KEY_ID.fullmatch(key_id):
            raise InvalidArgument(f"{key_id!r} is not an API key id (they look like mzk_0123…)")
        if not await self._store.revoke(key_id, self._clock.now()):
            raise NotFound(f"no API key {key_id} (or it was revoked already)")

    async def authenticate(self, secret: str) -> Caller:
        """The service account behind a key's secret; Unauthenticated unless it works now."""
        match = _SECRET.fullmatch(secret)
        found = None if match is None else await self._store.get_with_hash(match.group(1))
        # Compare hashes in constant time; an unknown id and a wrong secret read the same.
        if found is None or not hmac.compare_digest(found[1], _hash(secret)):
            raise Unauthenticated("the API key is not valid")
        key, _ = found
        now = self._clock.now()
        if key.revoked_at is not None:
            raise Unauthenticated(f"the API key {key.id} was revoked at {_utc(key.revoked_at)}")
        if key.expires_at is not None and now >= key.expires_at:
            raise Unauthenticated(f"the API key {key.id} expired at {_utc(key.expires_at)}")
        stale = now - LAST_USE_PRECISION_S
        # Only write when the recorded use is stale: on SQLite even an UPDATE that changes
        # nothing takes the database's write lock.
        if key.last_used_at is None or key.last_used_at < stale:
            await self._store.touch(key.id, now, stale)
        return Caller.of_api_key(key)
