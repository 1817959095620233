"""Who made a call: a person through a login session, or a service account through an API key."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ._api_key_store import ApiKey

if TYPE_CHECKING:  # the domain module builds callers, so it cannot be imported here
    from ._domain import SessionInfo
    from ._store import User

__all__ = ["Caller"]


@dataclasses.dataclass(frozen=True)
class Caller:
    """The authenticated caller of an RPC; exactly one of `session` and `api_key` is set."""

    is_admin: bool
    """Whether the caller has administrator rights."""

    session: SessionInfo | None = None
    """The user's session, when a person called."""

    api_key: ApiKey | None = None
    """The API key, when a service account called."""

    def __post_init__(self) -> None:
        if (self.session is None) == (self.api_key is None):
            raise ValueError("a caller has either a session or an API key")

    @classmethod
    def of_session(cls, info: SessionInfo) -> Caller:
        """A person, with the rights of their session."""
        return cls(is_admin=info.is_admin, session=info)

    @classmethod
    def of_api_key(cls, key: ApiKey) -> Caller:
        """A service account, with the rights its key was created with."""
        return cls(is_admin=key.admin, api_key=key)

    @property
    def user(self) -> User | None:
        """The calling user; None for an API key."""
        return None if self.session is None else self.session.user

    @property
    def user_id(self) -> str:
        """The calling user's id; empty for an API key."""
        return "" if self.session is None else self.session.user.id

    @property
    def api_key_id(self) -> str:
        """The id of the API key used; empty for a user."""
        return "" if self.api_key is None else self.api_key.id

    @property
    def display_name(self) -> str:
        """How logs and messages name the caller (never a secret)."""
        if self.api_key is not None:
            return f"API key {self.api_key.name!r} ({self.api_key.id})"
        assert self.session is not None
        return self.session.user.email or self.session.user.id
