"""A cluster with enrolled users, a policy and an online agent: what connection tests share.

`enrolled_org` starts the real IdP and `mrzapd serve` (on a fixed port, by default with the fast
keepalive configuration of test_agents), logs users in with MFA through the IdP (`zli login`),
creates an environment and imports a policy; `register_target` registers an agent in it;
`online_site` does both and runs the first agent (`mrzap-agent run`). Modules keep their own
policy (it is what their tests mean) and wrap these in a module-scoped fixture; modules that run
their agents differently (as another user, or towards a test broker) use the first two alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

from mrzap.process import ChildProcess
from tests.accounts import LOGIN

from .conftest import free_port, start_cluster
from .test_admin_cli import ok
from .test_agents import ONLINE_LINE, SERVICE_CONFIG, Org, register, run_agent
from .test_login import enrol

#: The account the tests connect to: the one target user every site's agent offers.
ME = LOGIN


@dataclasses.dataclass(frozen=True)
class Enrolled:
    """The running organisation with its users logged in and the policy imported."""

    org: Org
    """The cluster, with the first user's zli home as the administrator's."""
    homes: dict[str, Path]
    """Each user's zli home."""
    secrets: dict[str, str]
    """Each user's TOTP secret."""
    registration_key: str
    """For the environment the policy covers."""


@dataclasses.dataclass(frozen=True)
class Site:
    """The running organisation: its users, and the first agent online."""

    org: Org
    """The cluster, with the first user's zli home as the administrator's."""
    root: Path
    homes: dict[str, Path]
    """Each user's zli home."""
    secrets: dict[str, str]
    """Each user's TOTP secret."""
    target_id: str
    """The running agent's target id."""
    agent: ChildProcess
    """The running `mrzap-agent run` (its output is part of some tests' evidence)."""


@contextlib.contextmanager
def enrolled_org(
    root: Path,
    *,
    users: Sequence[str],
    env: str,
    policy: str,
    extra_config: str = SERVICE_CONFIG,
) -> Iterator[Enrolled]:
    """Start the IdP and the service under `root` (on a fixed port, so a test may restart it),
    log `users` in with MFA, create `env` and import `policy`; stop it all (printing the
    service's output, shown when a test failed) when the block ends.

    `users[0]` is the administrator (it must be in conftest.ADMINS). `extra_config` defaults to
    test_agents' fast keepalive configuration.
    """
    cluster, processes = start_cluster(root, port=free_port(), extra_config=extra_config)
    org: Org | None = None
    try:
        homes = {user: root / user for user in users}
        secrets = {user: enrol(cluster, homes[user], user) for user in users}
        org = Org(cluster, processes, homes[users[0]])
        org.zli("env", "create", env)
        (root / "policy.yaml").write_text(policy)
        ok(cluster, org.admin, "policy", "import", str(root / "policy.yaml"))
        yield Enrolled(org, homes, secrets, org.registration_key(env))
    finally:
        processes[0].stop()
        # A test may have restarted the service (Org.restart_service): stop the one running.
        service = org.service if org is not None else processes[1]
        service.stop()
        print(service.output)  # shown when a test failed


def register_target(
    org: Org, directory: Path, name: str, key: str, *, target_users: Sequence[str] = ()
) -> str:
    """Register a target (pinning the real grant keys and IdP) in `directory`; its id.

    With `target_users`, the agent's local policy offers those users (and only them).
    """
    done = register(
        org,
        directory,
        "--registration-key",
        key,
        "--ca-fingerprint",
        org.fingerprint,
        "--name",
        name,
    )
    assert done.returncode == 0, done.output
    if target_users:
        offered = ", ".join(f'"{user}"' for user in target_users)
        (directory / "local-policy.toml").write_text(f"target_users = [{offered}]\n")
    return str(tomllib.loads((directory / "agent.toml").read_text())["target_id"])


@contextlib.contextmanager
def online_site(
    root: Path,
    *,
    users: Sequence[str],
    env: str,
    policy: str,
    agents: Sequence[str] = ("web-1",),
) -> Iterator[Site]:
    """`enrolled_org` with agents: every name in `agents` is registered in `env` with `ME` as its
    only local target user, under `root / name`, and the first one runs until the block ends
    (its output is printed then, shown when a test failed)."""
    with enrolled_org(root, users=users, env=env, policy=policy) as enrolled:
        org = enrolled.org
        for name in agents:
            register_target(org, root / name, name, enrolled.registration_key, target_users=(ME,))
        agent = run_agent(root / agents[0])
        try:
            target_id = agent.wait_for(ONLINE_LINE, timeout_s=30).group(1)
            yield Site(org, root, enrolled.homes, enrolled.secrets, target_id, agent)
        finally:
            agent.stop()
            print(agent.output)  # shown when a test failed
