"""The Unix account the tests log in to: `LOGIN`.

A login shell runs its account's startup files, and root's on a developer machine or a CI image
can hold anything. One that bit: a version manager's `rehash`, hung up between taking its lock
file and arming the trap that removes it, leaves the lock behind, and every later login of that
account then waits a minute for it. So as root the suite logs in to an account of its own with
the distribution's default startup files, created when the run starts and removed when it ends.
Without root the agent can act only as the user running it, so that user it is.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid

__all__ = ["LOGIN", "create_login_account", "remove_login_account"]

_AS_ROOT = os.geteuid() == 0

#: The account the tests' shells and commands run as.
LOGIN = f"mzlogin{uuid.uuid4().hex[:6]}" if _AS_ROOT else pwd.getpwuid(os.getuid()).pw_name


def create_login_account() -> None:
    """As root, create `LOGIN` with a home made from /etc/skel; otherwise nothing."""
    if _AS_ROOT:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", LOGIN],
            check=True,
            capture_output=True,
        )


def remove_login_account() -> None:
    """Remove `LOGIN` and its home again, if this run created it."""
    if _AS_ROOT:
        subprocess.run(["userdel", "--remove", LOGIN], check=False, capture_output=True)
