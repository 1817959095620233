"""The auth role: login with PK tokens, TOTP MFA, users, service sessions and API keys.

Flow: `zli login` obtains a PK token from the organisation's IdP and calls `Login`, which verifies
it exactly as an agent will (PROTOCOL.md section 3) and proves the caller holds the session key.
The user record is created on first login; administrators come from configuration. The session
starts MFA-pending, becomes usable after a TOTP code, lasts as long as the freshest ID token, and
is refreshed with refreshed ID tokens until the organisation's maximum session age.

Service accounts (scripts, CI) call with an API key instead: created by an administrator, shown
once, stored as a hash, with a user's or an administrator's rights, an optional expiry and
immediate revocation. `SessionInterceptor` authenticates every call either way and servicers ask
`current_caller()` who called.

An administrator may lock a user (`lock_user`; the broker's LockUser adds a revocation on every
agent): the lock ends their sessions, and a locked user cannot log in, refresh or make any call
until unlocked.

Servicer -> `AuthService` (domain; `ApiKeyService` for keys) -> `AuthStore`, `ApiKeyStore` (SQL
tables owned by this role).
"""

from __future__ import annotations

from ._api_key_store import ApiKey, ApiKeyStore
from ._api_keys import API_KEY_PREFIX, ApiKeyService, looks_like_api_key
from ._caller import Caller
from ._config import AuthConfig, OrgControls
from ._domain import LOCKED_MESSAGE, AuthService, LoginResult, SessionInfo
from ._interceptor import (
    ONLY_ADMINISTRATORS,
    Access,
    SessionInterceptor,
    current_caller,
    current_session,
)
from ._migrations import MIGRATIONS
from ._store import AuthStore, Session, User, UserLock

__all__ = [
    "API_KEY_PREFIX",
    "LOCKED_MESSAGE",
    "MIGRATIONS",
    "ONLY_ADMINISTRATORS",
    "Access",
    "ApiKey",
    "ApiKeyService",
    "ApiKeyStore",
    "AuthConfig",
    "AuthService",
    "AuthStore",
    "Caller",
    "LoginResult",
    "OrgControls",
    "Session",
    "SessionInfo",
    "SessionInterceptor",
    "User",
    "UserLock",
    "current_caller",
    "current_session",
    "looks_like_api_key",
]
