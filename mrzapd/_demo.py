"""The demo access of `mrzapd up`: who may reach the local agent, written once and kept current.

Two things must agree before a demo user gets a shell, because a target checks both roots of
trust (PROTOCOL.md section 5, step 6):
- the service's policy `DEMO_POLICY_NAME` lets the demo users open shells and run commands on the
  local target as the Unix user `mrzapd up` runs as (the only one an agent can serve without
  root, and the one whose machine this is);
- the agent's own `local-policy.toml` allows that user.

Both are idempotent: a policy that already says exactly this is left alone (no new version at
every start), one that differs (say, `mrzapd up` now runs as another user) gets a new version,
and a local-policy.toml the operator wrote is never overwritten.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Sequence
from pathlib import Path

from mrzap.errors import InvalidArgument
from policy import (
    SubjectSelector,
    TargetConnectRules,
    TargetSelector,
    Verb,
    policy_change_event,
)

from ._server import RunningServer

__all__ = ["DEMO_POLICY_NAME", "demo_target_user", "ensure_demo_policy", "ensure_local_policy"]

#: The name of the policy `mrzapd up` manages; delete or edit it like any other policy.
DEMO_POLICY_NAME = "mrzapd-up-demo"
_DESCRIPTION = "Written by `mrzapd up`: the demo users may use this machine as {user}."
#: How `mrzapd up` shows up in the audit log as the author of its policy.
_METHOD = "mrzapd up/demo policy"
#: The agent's own policy file (agent._local_policy.LOCAL_POLICY_FILE).
_LOCAL_POLICY_FILE = "local-policy.toml"
#: The first line of a local-policy.toml `mrzapd up` wrote (and may therefore rewrite).
_LOCAL_POLICY_HEADER = (
    "# Written by `mrzapd up`: the target users this agent serves, whatever a grant says.\n"
)


def demo_target_user(requested: str | None) -> str:
    """The Unix user the demo offers: `requested`, or by default the one running `mrzapd up`.

    Raises InvalidArgument for an account this machine lacks, or another account than its own
    when not running as root (the local agent runs as the same user and could not act as it).
    """
    me = pwd.getpwuid(os.getuid()).pw_name
    if not requested or requested == me:
        return me
    try:
        pwd.getpwnam(requested)
    except KeyError:
        raise InvalidArgument(f"--target-user: there is no Unix user {requested!r} here") from None
    if os.geteuid() != 0:
        raise InvalidArgument(
            f"--target-user: mrzapd up runs as {me!r}, not root, so its agent can act only as "
            f"{me!r}, not as {requested!r}"
        )
    return requested


def _rules(emails: Sequence[str], target_id: str, target_user: str) -> TargetConnectRules:
    return TargetConnectRules(
        subjects=SubjectSelector(user_emails=tuple(emails)),
        targets=TargetSelector(target_ids=(target_id,)),
        target_users=(target_user,),
        verbs=(Verb.SHELL, Verb.EXEC),
    )


async def ensure_demo_policy(
    running: RunningServer, emails: Sequence[str], target_id: str, target_user: str
) -> None:
    """Create (or bring up to date) the policy letting `emails` connect to the local target."""
    rules = _rules(emails, target_id, target_user)
    description = _DESCRIPTION.format(user=target_user)
    store = running.policies
    existing = [p for p in await store.all_current() if p.name == DEMO_POLICY_NAME]
    if existing and existing[0].rules == rules and existing[0].description == description:
        return
    async with store.transaction() as session:
        if existing:
            policy = await store.update(
                existing[0].id, DEMO_POLICY_NAME, description, rules, time.time(), session
            )
            what = "updated"
        else:
            policy = await store.create(DEMO_POLICY_NAME, description, rules, time.time(), session)
            what = "created"
        # In the change's transaction, like every policy change: the log shows who wrote it.
        await running.audit.record(
            policy_change_event(_METHOD, None, "", what, policy), session=session
        )
    await running.decider.reload()


def ensure_local_policy(agent_dir: Path, target_user: str) -> None:
    """Write the agent's local-policy.toml allowing `target_user`, unless the operator wrote one."""
    path = agent_dir / _LOCAL_POLICY_FILE
    if path.exists() and not path.read_text().startswith(_LOCAL_POLICY_HEADER):
        return
    path.write_text(_LOCAL_POLICY_HEADER + f"target_users = [{json.dumps(target_user)}]\n")
