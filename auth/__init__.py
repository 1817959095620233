"""The auth role: login with PK tokens, TOTP MFA, users and service sessions.

Flow: `zli login` obtains a PK token from the organisation's IdP and calls `Login`, which verifies
it exactly as an agent will (PROTOCOL.md section 3) and proves the caller holds the session key.
The user record is created on first login; administrators come from configuration. The session
starts MFA-pending, becomes usable after a TOTP code, lasts as long as the freshest ID token, and
is refreshed with refreshed ID tokens until the organisation's maximum session age.

Servicer -> `AuthService` (domain) -> `AuthStore` (SQL tables owned by this role).
"""

from __future__ import annotations

from ._config import AuthConfig, OrgControls
from ._domain import AuthService, LoginResult, SessionInfo
from ._migrations import MIGRATIONS
from ._store import AuthStore, Session, User

__all__ = [
    "MIGRATIONS",
    "AuthConfig",
    "AuthService",
    "AuthStore",
    "LoginResult",
    "OrgControls",
    "Session",
    "SessionInfo",
    "User",
]
