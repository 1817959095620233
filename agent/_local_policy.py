"""The agent's own limits: which target users it serves and where tunnels may go.

PROTOCOL.md section 5, step 6 checks every action against the grant *and* against the target's
own configuration, so a compromised service cannot open a shell as a user the target's
administrator never offered. That configuration is `local-policy.toml` in the agent's
configuration directory, written by the target's administrator (registration never touches it):

    target_users = ["deploy", "alice"]          # "*" serves every user
    tunnel_destinations = ["127.0.0.1:5432", "db.internal:8000-8080"]

Without the file, an agent running as root serves every user and no tunnel destination.

An agent that does not run as root cannot switch users (no setuid), so it serves only the user it
runs as, whatever the file says; `LocalPolicy.refusal` says so in the words a user sees.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import tomllib
from pathlib import Path

from mrzap.config import AgentLocalPolicy
from mrzap.errors import InvalidArgument, MrzapError

__all__ = ["LOCAL_POLICY_FILE", "LocalPolicy"]

#: The file's name inside the agent's configuration directory.
LOCAL_POLICY_FILE = "local-policy.toml"

_KNOWN_KEYS = frozenset({"target_users", "tunnel_destinations"})


@dataclasses.dataclass(frozen=True)
class LocalPolicy:
    """The agent's effective local policy and why it is what it is."""

    policy: AgentLocalPolicy
    """What step 6 of the SYN check enforces."""

    running_as: str | None
    """The user the agent runs as when it is not root (and so serves only that user); else None."""

    ignored_users: frozenset[str] = frozenset()
    """Configured users a non-root agent cannot serve (logged once at start)."""

    @classmethod
    def from_file(cls, path: Path, *, uid: int | None = None) -> LocalPolicy:
        """Read `path` (a missing file gives the defaults); InvalidArgument names what is wrong.

        `uid` is the user the agent runs as (default: the process's effective uid).
        """
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return cls.build(None, (), uid=uid)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise InvalidArgument(f"{path}: {error}") from None
        unknown = sorted(set(raw) - _KNOWN_KEYS)
        if unknown:
            raise InvalidArgument(f"{path}: unknown settings {', '.join(unknown)}")
        users, destinations = raw.get("target_users", []), raw.get("tunnel_destinations", [])
        for name, value in (("target_users", users), ("tunnel_destinations", destinations)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidArgument(f"{path}: {name} must be a list of strings")
        try:
            return cls.build(users, destinations, uid=uid)
        except MrzapError as error:
            raise InvalidArgument(f"{path}: {error.message}") from None

    @classmethod
    def build(
        cls,
        target_users: list[str] | None,
        tunnel_destinations: list[str] | tuple[str, ...],
        *,
        uid: int | None = None,
    ) -> LocalPolicy:
        """The effective policy for an agent running as `uid` (default: this process's).

        `target_users` None means "not configured": every user for root, else the agent's own.
        """
        uid = os.geteuid() if uid is None else uid
        if uid == 0:
            users = ["*"] if target_users is None else target_users
            return cls(AgentLocalPolicy.from_strings(users, tunnel_destinations), None)
        own = _user_name(uid)
        wanted = [own] if target_users is None else target_users
        served = [own] if own in wanted or "*" in wanted else []
        ignored = frozenset(wanted) - {own, "*"}
        return cls(AgentLocalPolicy.from_strings(served, tunnel_destinations), own, ignored)

    def allows_user(self, user: str) -> bool:
        """Whether the agent serves `user`."""
        return self.policy.allows_user(user)

    def refusal(self, user: str) -> str:
        """Why `user` is not served, in words for the person who asked."""
        if self.running_as is not None and user != self.running_as:
            return (
                f"this agent runs as {self.running_as!r}, not root, so it can serve only "
                f"{self.running_as!r}, not {user!r}"
            )
        return f"this target's own configuration does not allow user {user!r}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        # A container may run under a uid without a passwd entry; the number still names it.
        return str(uid)
