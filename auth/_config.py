"""Configuration of the auth role."""

from __future__ import annotations

import dataclasses

from mrzap.config import IdpConfig
from mrzap.errors import InvalidArgument

__all__ = ["AuthConfig", "OrgControls"]


@dataclasses.dataclass(frozen=True)
class OrgControls:
    """Organisation-wide login controls."""

    mfa_required: bool = True
    """Whether a session needs a TOTP code before it can be used."""

    mfa_window_s: float = 12 * 3600
    """How long an MFA verification counts as recent (grants need a recent one)."""

    def __post_init__(self) -> None:
        if self.mfa_window_s <= 0:
            raise InvalidArgument("mfa_window_s must be positive")


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """Everything the auth role needs to know about the organisation."""

    idp: IdpConfig
    """The identity provider whose tokens are accepted."""

    scopes: tuple[str, ...] = ("openid", "email", "profile", "offline_access")
    """OIDC scopes clients ask for."""

    client_secret: str = dataclasses.field(default="", repr=False)
    """The OIDC client secret, for IdPs that do not allow public clients; empty otherwise."""

    admin_emails: frozenset[str] = frozenset()
    """Users with one of these (verified) emails are administrators."""

    admin_groups: frozenset[str] = frozenset()
    """Users in one of these IdP groups are administrators."""

    controls: OrgControls = OrgControls()
    """Organisation controls."""

    groups_claim: str = "groups"
    """The ID token claim that lists the user's groups."""

    def __post_init__(self) -> None:
        if "openid" not in self.scopes:
            raise InvalidArgument("scopes must include openid")
        object.__setattr__(self, "admin_emails", frozenset(e.lower() for e in self.admin_emails))

    def is_admin(self, email: str, groups: tuple[str, ...]) -> bool:
        """Whether a user with this email and these groups is an administrator."""
        return email.lower() in self.admin_emails or bool(self.admin_groups & set(groups))
