"""A user who is not an administrator finds targets by name: real IdP, `mrzapd serve`, a running
`mrzap-agent run`, and zli as a separate process, as bob runs it.

bob's policy covers the environment of web-1 only; secret-1 (in another environment) must stay
invisible to him, by name and by id, while alice (an administrator) sees both.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import BIN
from .targets import ME, online_site
from .test_agents import Org

TIMEOUT_S = 20
ENV = "e2e-user-targets"
POLICY = f"""\
name: bob-commands
kind: target_connect
subjects:
  emails: [bob@example.com]
targets:
  environments: [{ENV}]
target_users: [{ME}]
verbs: [exec]
"""


class Users:
    """The organisation (alice, an administrator), bob's zli home and the hidden target's id."""

    def __init__(self, org: Org, bob: Path, secret_id: str) -> None:
        self.org = org
        self.bob = bob
        self.secret_id = secret_id


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Users]:
    root = tmp_path_factory.mktemp("user-targets")
    # bob is not an administrator.
    with online_site(root, users=("alice", "bob"), env=ENV, policy=POLICY) as site:
        org = site.org
        # A target in the default environment, which bob's policy does not cover.
        org.activation_token("secret-1")
        secret = json.loads(org.zli("targets", "show", "secret-1", "--json"))
        yield Users(org, site.homes["bob"], secret["target"]["id"])


def zli(users: Users, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run zli as bob (or the user whose zli home is `home`) to the end."""
    return subprocess.run(
        [str(BIN / "zli"), *args],
        capture_output=True,
        text=True,
        env=users.org.cluster.env(home or users.bob),
        timeout=TIMEOUT_S * 2,
        check=False,
    )


def test_a_user_runs_a_command_on_a_target_named_by_its_name(users: Users) -> None:
    done = zli(users, "exec", f"{ME}@web-1", "--", "echo hi from bob")
    assert (done.stdout, done.returncode) == ("hi from bob\n", 0), done.stderr


def test_a_user_lists_only_the_targets_a_policy_lets_him_reach(users: Users) -> None:
    listed = zli(users, "targets", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)] == ["web-1"]
    table = zli(users, "targets", "list")
    assert table.returncode == 0, table.stderr
    assert "web-1" in table.stdout
    assert "secret-1" not in table.stdout
    # The administrator still sees every target.
    everything = json.loads(users.org.zli("targets", "list", "--json"))
    assert sorted(t["name"] for t in everything) == ["secret-1", "web-1"]


def test_a_target_outside_the_users_policies_is_not_found(users: Users) -> None:
    by_name = zli(users, "exec", f"{ME}@secret-1", "--", "true")
    assert by_name.returncode != 0
    assert "no target named 'secret-1'" in by_name.stderr
    shown = zli(users, "targets", "show", users.secret_id)
    assert shown.returncode != 0
    assert f"no target with id '{users.secret_id}'" in shown.stderr
    mine = zli(users, "targets", "show", "web-1", "--json")
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout)["target"]["name"] == "web-1"
