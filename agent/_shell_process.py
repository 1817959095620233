"""How the agent starts a process as a target user: account, credentials, environment, exit status.

A shell or command runs with the target user's real identity, as `login` would give it: the
user's uid and gid, every supplementary group of the account (initgroups, through
`os.getgrouplist`), the home directory as working directory, and a fresh environment with
`HOME`, `SHELL`, `USER`, `LOGNAME`, `PATH` and `TERM` -- nothing of the agent's own environment
leaks into it. An agent that is not root cannot switch users, so it runs processes only as itself.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import signal
from pathlib import Path
from typing import Any

from mrzap.verification import Reason, VerificationError

__all__ = ["ExitStatus", "TargetUser"]

_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_USER_PATH = "/usr/local/bin:/usr/bin:/bin"
_FALLBACK_SHELL = "/bin/sh"


@dataclasses.dataclass(frozen=True)
class TargetUser:
    """A Unix account a session runs as."""

    name: str
    """The login name."""

    uid: int
    """The user id."""

    gid: int
    """The primary group id."""

    home: str
    """The home directory (the working directory, if it exists)."""

    shell: str
    """The login shell (`/bin/sh` when the account names none)."""

    @classmethod
    def lookup(cls, name: str) -> TargetUser:
        """The account `name`, if this agent can act as it.

        Raises VerificationError(ACTION_TARGET_USER_NOT_ALLOWED) when the account does not exist
        or the agent, not being root, is not running as it: the SYN is then rejected.
        """
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise VerificationError(
                Reason.ACTION_TARGET_USER_NOT_ALLOWED,
                f"user {name!r} does not exist on this target",
            ) from None
        euid = os.geteuid()
        if euid not in (0, entry.pw_uid):
            raise VerificationError(
                Reason.ACTION_TARGET_USER_NOT_ALLOWED,
                f"this agent does not run as root, so it cannot act as {name!r}",
            )
        return cls(
            name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell or _FALLBACK_SHELL
        )

    def environment(self, term: str | None = None) -> dict[str, str]:
        """A fresh login environment for this user."""
        env = {
            "HOME": self.home,
            "SHELL": self.shell,
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": _ROOT_PATH if self.uid == 0 else _USER_PATH,
        }
        if term:
            env["TERM"] = term
        lang = os.environ.get("LANG")
        if lang:
            env["LANG"] = lang
        return env

    def working_directory(self) -> str:
        """The home directory, or `/` when it does not exist (as `login` does)."""
        return self.home if Path(self.home).is_dir() else "/"

    def spawn_options(self) -> dict[str, Any]:
        """Keyword arguments for `subprocess`/`asyncio` that run the child as this user.

        As root: setgroups to the account's groups, then setgid, then setuid (the order
        `subprocess` uses, which is the only order that works). Otherwise the child is already
        this user (`lookup` made sure).
        """
        if os.geteuid() != 0:
            return {}
        return {
            "user": self.uid,
            "group": self.gid,
            "extra_groups": os.getgrouplist(self.name, self.gid),
        }


@dataclasses.dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit code, or the signal that killed it."""

    code: int
    """The exit code; 128 + signal number when a signal ended it (as shells report it)."""

    signal: int = 0
    """The signal number that ended the process, or 0."""

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        """From `Process.returncode` (negative: killed by that signal)."""
        if returncode < 0:
            return cls(128 - returncode, -returncode)
        return cls(returncode)

    def __str__(self) -> str:
        if self.signal:
            try:
                return f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                return f"killed by signal {self.signal}"
        return f"exit code {self.code}"
