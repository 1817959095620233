"""Administration with `zli` end to end: real IdP, service and zli processes.

An administrator creates an environment, a registration key and an install command; the real
`mrzap-agent register` line it prints registers a target (pinning the service's CA by the printed
fingerprint); the administrator lists, shows, renames and deletes it. A plain user is refused
the administrator's commands, and an API key drives zli without a login until it is revoked.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from mrzap.process import ChildProcess
from mrzap.tls import ca_fingerprint

from .conftest import BIN, Cluster
from .test_login import enrol


def zli(cluster: Cluster, home: Path, *args: str, api_key: str = "") -> tuple[int, str]:
    """Run zli to the end; returns its exit code and everything it printed."""
    env = cluster.env(home)
    env.pop("MRZAP_API_KEY", None)
    if api_key:
        env["MRZAP_API_KEY"] = api_key
    process = ChildProcess([str(BIN / "zli"), *args], env=env)
    code = process.wait()
    return code, process.output


def ok(cluster: Cluster, home: Path, *args: str, api_key: str = "") -> str:
    """zli's output, after checking it succeeded."""
    code, output = zli(cluster, home, *args, api_key=api_key)
    assert code == 0, f"zli {' '.join(args)} exited {code}:\n{output}"
    return output


def run_register_command(command: str, config_dir: Path) -> str:
    """Run the `mrzap-agent register` line zli printed (with a private config directory)."""
    argv = shlex.split(command)
    assert argv[:2] == ["mrzap-agent", "register"]
    agent = ChildProcess([str(BIN / "mrzap-agent"), *argv[1:], "--config-dir", str(config_dir)])
    code = agent.wait(30)
    assert code == 0, agent.output
    return agent.output


@pytest.fixture(scope="module")
def admin(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config directory of olivia, an administrator who has logged in with MFA."""
    home = tmp_path_factory.mktemp("olivia")
    enrol(cluster, home, "olivia")
    return home


def test_admin_registers_and_manages_a_target(
    cluster: Cluster, admin: Path, tmp_path: Path
) -> None:
    ok(
        cluster,
        admin,
        "env",
        "create",
        "e2e-web",
        "--description",
        "web",
        "--offline-cleanup",
        "12h",
    )
    [env] = [
        e for e in json.loads(ok(cluster, admin, "env", "list", "--json")) if e["name"] == "e2e-web"
    ]
    assert env["offline_cleanup_timeout"] == "43200s"

    created = json.loads(
        ok(cluster, admin, "keys", "registration", "create", "web hosts", "--env", "e2e-web",
           "--ttl", "30d", "--json")
    )  # fmt: skip
    key_secret = created["secret"]
    assert key_secret.startswith(created["registration_key"]["id"] + "_")

    install = json.loads(
        ok(
            cluster,
            admin,
            "agent",
            "install-command",
            "--env",
            "e2e-web",
            "--name",
            "web-1",
            "--json",
        )
    )
    [command] = [c for c in install["commands"] if c.startswith("mrzap-agent register")]
    register = shlex.split(command)
    assert register[register.index("--ca-fingerprint") + 1] == ca_fingerprint(
        cluster.ca_file.read_bytes()
    )
    assert register[register.index("--server") + 1] == cluster.server
    assert register[register.index("--activation-token") + 1] == install["activation_token"]
    registered = run_register_command(command, tmp_path / "agent")
    target_id = install["target"]["id"]
    assert f"Registered as target web-1 ({target_id})" in registered

    listed = ok(cluster, admin, "targets", "list", "--env", "e2e-web").splitlines()
    assert listed[0].split()[:3] == ["NAME", "STATE", "ENVIRONMENT"]
    assert listed[1].split()[:3] == ["web-1", "registered", "e2e-web"]
    shown = ok(cluster, admin, "targets", "show", "web-1")
    assert re.search(rf"^id: +{target_id}$", shown, re.MULTILINE)
    history = shown.split("State history:")[1]
    assert "activation" in history
    assert "registered" in history

    # Anyone holding the registration key can make an install command, without logging in.
    anonymous = tmp_path / "no-login"
    by_key = ok(cluster, anonymous, "agent", "install-command", "--registration-key", key_secret)
    assert "mrzap-agent register" in by_key
    pending = json.loads(ok(cluster, admin, "targets", "list", "--state", "activation", "--json"))
    assert target_id not in [t["id"] for t in pending]
    assert any(t["environment_id"] == env["id"] for t in pending)

    ok(cluster, admin, "targets", "rename", "web-1", "web-one")
    assert target_id in ok(cluster, admin, "targets", "show", "web-one")
    code, output = zli(cluster, admin, "targets", "show", "web-1")
    assert (code, output.strip()) == (
        5,
        "zli: no target named 'web-1': `zli targets list` shows those you may see",
    )

    rotated = json.loads(
        ok(cluster, admin, "keys", "registration", "rotate", "web hosts", "--json")
    )
    code, output = zli(
        cluster, anonymous, "agent", "install-command", "--registration-key", key_secret
    )
    assert code == 3
    assert "was rotated" in output
    ok(cluster, admin, "keys", "registration", "revoke", "web hosts")
    code, output = zli(
        cluster, anonymous, "agent", "install-command", "--registration-key", rotated["secret"]
    )
    assert code == 3
    assert "revoked" in output

    ok(cluster, admin, "targets", "delete", "web-one", "--yes")
    assert "web-one" not in ok(cluster, admin, "targets", "list", "--all-pages")


def test_a_plain_user_is_refused_administration(cluster: Cluster, tmp_path: Path) -> None:
    home = tmp_path / "oscar"
    enrol(cluster, home, "oscar")
    for command in (
        ("env", "create", "mine"),
        ("keys", "registration", "create", "mine"),
        ("keys", "api", "create", "mine"),
        ("agent", "install-command"),
    ):
        code, output = zli(cluster, home, *command)
        assert code == 4, output
        assert output.startswith("zli: only administrators may ")


def test_an_api_key_drives_zli_until_revoked(cluster: Cluster, admin: Path, tmp_path: Path) -> None:
    created = json.loads(
        ok(
            cluster,
            admin,
            "keys",
            "api",
            "create",
            "e2e ci",
            "--role",
            "admin",
            "--ttl",
            "1d",
            "--json",
        )
    )
    secret = created["secret"]
    ci = tmp_path / "ci"  # no login here: only the key
    ok(cluster, ci, "env", "create", "e2e-ci", api_key=secret)
    assert "e2e-ci" in ok(cluster, ci, "env", "list", api_key=secret)
    assert "e2e ci" in ok(cluster, ci, "keys", "api", "list", api_key=secret)
    code, output = zli(cluster, ci, "keys", "api", "create", "more", api_key=secret)
    assert (code, output.strip()) == (
        4,
        "zli: API keys cannot create API keys: an administrator must log in with `zli login`",
    )
    code, output = zli(cluster, ci, "whoami", api_key=secret)
    assert code == 4
    assert "needs a user's login session" in output

    reader = json.loads(ok(cluster, admin, "keys", "api", "create", "e2e reader", "--json"))
    code, output = zli(cluster, ci, "env", "delete", "e2e-ci", api_key=reader["secret"])
    assert (code, output.strip()) == (4, "zli: only administrators may do this")

    ok(cluster, admin, "keys", "api", "revoke", "e2e ci")
    code, output = zli(cluster, ci, "env", "list", api_key=secret)
    assert code == 3
    assert f"the API key {created['api_key']['id']} was revoked" in output
    ok(cluster, admin, "env", "delete", "e2e-ci")
