"""Target users end to end: shells and commands run as real Unix accounts, and only allowed ones.

Real IdP, `mrzapd serve`, alice logged in with MFA, a policy that lets her act as three Unix
users this test creates (`useradd`, removed at the end), and real `mrzap-agent run` processes:

- one running as root, whose local-policy.toml offers two of the three users: a shell or command
  runs with the account's uid, gid, supplementary groups, HOME and SHELL; the third user is
  refused with a valid grant (the agent's own configuration wins); several connections run at
  once;
- one running as one of the created users (not root, through `setpriv`): it serves that user
  and refuses another one, saying that it is not root.

Creating users needs root (as CI runs), so without it the whole module is skipped.
The client side is driven from the test with mrzap.handshake and mrzap.channel over alice's zli
session, through BrokerService.OpenConnection and BrokerService.Channel, as in test_connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.handshake import Action
from mrzap.process import ChildProcess
from mrzap.verification import Reason

from .client_channel import ClientChannel, start_channel
from .conftest import Cluster
from .targets import enrolled_org, register_target
from .test_agents import ONLINE_LINE, Org

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="creating Unix users for the target needs root (CI runs as root)"
)

BIN = Path(sys.executable).parent
TIMEOUT_S = 20.0
GROUP = "mrzap-e2e-staff"
#: name → login shell. The first two are offered by the root agent; the third is not.
USERS = {"mrzap-e2e-ann": "/bin/bash", "mrzap-e2e-ben": "/bin/sh", "mrzap-e2e-cyd": "/bin/sh"}
ANN, BEN, CYD = USERS
POLICY = f"""\
name: target-users
kind: target_connect
subjects:
  emails: [alice@example.com]
targets:
  environments: [e2e-users]
target_users: [{ANN}, {BEN}, {CYD}]
verbs: [shell, exec]
max_session_duration: 1h
"""
#: What each session prints about itself, one value a line.
WHOAMI = 'id -un; id -u; id -g; id -G; echo "home=$HOME"; echo "shell=$SHELL"'
# (It reads no input: a command may end before the client could send end-of-input.)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _remove_accounts() -> None:
    for name in USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            _run("userdel", "--remove", name)
    with contextlib.suppress(KeyError):
        grp.getgrnam(GROUP)
        _run("groupdel", GROUP)


@pytest.fixture(scope="module")
def accounts() -> Iterator[None]:
    """The Unix users and their extra group, created for this module and removed after it."""
    _remove_accounts()  # left over from an interrupted run
    try:
        _run("groupadd", GROUP)
        for name, shell in USERS.items():
            extra = ["--groups", GROUP] if name == ANN else []
            _run("useradd", "--create-home", "--shell", shell, *extra, name)
        yield
    finally:
        _remove_accounts()


@dataclasses.dataclass
class Site:
    """The organisation, alice's zli home and the target of the agent running as root."""

    cluster: Cluster
    alice: Path
    org: Org
    registration_key: str
    """For the environment the policy covers."""
    root_target: str
    """Served by an agent running as root that offers ANN and BEN."""


def _agent(config_dir: Path, *as_user: str) -> ChildProcess:
    argv = [str(BIN / "mrzap-agent"), "run", "--config-dir", str(config_dir)]
    return ChildProcess([*as_user, *argv, "--reconnect-base", "0.3", "--reconnect-cap", "2"])


def _as_user(name: str) -> list[str]:
    """Run a command as `name`, not root.

    The only capability kept is reading any file (CAP_DAC_READ_SEARCH), because this machine's
    Python lives under /root; it cannot switch users, which is what the test is about.
    """
    return [
        "setpriv",
        f"--reuid={name}",
        f"--regid={name}",
        "--init-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        "--",
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, accounts: None) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("target-users")
    with enrolled_org(
        root, users=("alice",), env="e2e-users", policy=POLICY, extra_config=""
    ) as enrolled:
        org, key = enrolled.org, enrolled.registration_key
        root_dir = root / "root-agent"
        root_target = register_target(org, root_dir, "users-root", key, target_users=(ANN, BEN))
        agent = _agent(root_dir)
        try:
            agent.wait_for(ONLINE_LINE, timeout_s=30)
            yield Site(org.cluster, org.admin, org, key, root_target)
        finally:
            agent.stop()
            print(agent.output)  # shown when a test failed


@pytest.fixture(scope="module")
def user_agent(site: Site) -> Iterator[tuple[str, ChildProcess]]:
    """A second target, served by an agent running as BEN; (target id, agent process)."""
    if shutil.which("setpriv") is None:
        pytest.skip("running the agent as another user needs setpriv (util-linux)")
    # Outside pytest's 0700 temporary folders, so that its user can reach it.
    user_dir = Path(tempfile.mkdtemp(prefix="mrzap-user-agent-")) / "agent"
    agent: ChildProcess | None = None
    try:
        target_id = register_target(
            site.org, user_dir, "users-ben", site.registration_key, target_users=(ANN, BEN)
        )
        _run("chown", "-R", f"{BEN}:{BEN}", str(user_dir.parent))
        agent = _agent(user_dir, *_as_user(BEN))
        agent.wait_for(ONLINE_LINE, timeout_s=30)
        yield target_id, agent
    finally:
        if agent is not None:
            agent.stop()
            print(agent.output)  # shown when a test failed
        shutil.rmtree(user_dir.parent, ignore_errors=True)


# --- a client, as zli would be -----------------------------------------------------------------


@dataclasses.dataclass
class Opened:
    """An accepted channel."""

    channel: ClientChannel

    async def send(self, message: mrzap_pb2.ChannelMessage) -> None:
        await self.channel.send(message)

    async def finish(self) -> tuple[str, int]:
        """Read to the exit; (stdout and stderr as text, exit code)."""
        out, code = await self.channel.until_exit(with_stderr=True)
        return out.decode(errors="replace"), code


class Client:
    """alice's client over one gRPC connection to the real broker."""

    def __init__(self, site: Site, channel: grpc.aio.Channel) -> None:
        self._home = site.alice
        self._stub = pb_grpc.BrokerServiceStub(channel)

    async def open(self, target_id: str, action: Action) -> Opened | mrzap_pb2.Reject:
        """Ask the broker for a grant and send the SYN; the open channel or the agent's Reject."""
        started = await start_channel(
            self._stub,
            self._home,
            target_id,
            action,
            target_user=action.target_user,
            timeout_s=TIMEOUT_S,
            call_timeout_s=TIMEOUT_S,
        )
        return Opened(started) if isinstance(started, ClientChannel) else started


async def _with_client(site: Site, work: Any) -> Any:  # noqa: ANN401 - the work's own result
    credentials = grpc.ssl_channel_credentials(site.cluster.ca_file.read_bytes())
    async with grpc.aio.secure_channel(site.cluster.server, credentials) as channel:
        return await work(Client(site, channel))


#: Terminal control sequences a login shell prints (title, bracketed paste mode).
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _lines(output: str) -> list[str]:
    """The lines of a session's output, without terminal control sequences."""
    plain = _TERMINAL_CODES.sub("", output).replace("\r", "")
    # sh may print its prompt after the echoed input, in front of the first output line.
    return [line.strip().removeprefix("$ ") for line in plain.splitlines()]


def _whoami_of(output: str) -> dict[str, str]:
    """The values WHOAMI printed, found in `output` (a terminal echoes the command line too)."""
    lines = _lines(output)
    found = {}
    for key in ("home", "shell"):
        found[key] = next(line.split("=", 1)[1] for line in lines if line.startswith(f"{key}="))
    name_at = max(i for i, line in enumerate(lines) if line in USERS)
    found["name"], found["uid"], found["gid"], found["groups"] = lines[name_at : name_at + 4]
    return found


def _expected(name: str) -> dict[str, str]:
    entry = pwd.getpwnam(name)
    groups = os.getgrouplist(name, entry.pw_gid)
    return {
        "name": name,
        "uid": str(entry.pw_uid),
        "gid": str(entry.pw_gid),
        "groups": " ".join(str(g) for g in sorted(set(groups))),
        "home": entry.pw_dir,
        "shell": entry.pw_shell,
    }


def _normalised(found: dict[str, str]) -> dict[str, str]:
    groups = " ".join(str(g) for g in sorted({int(g) for g in found["groups"].split()}))
    return {**found, "groups": groups}


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [ANN, BEN])
def test_a_command_runs_as_the_target_user(site: Site, name: str) -> None:
    async def work(client: Client) -> tuple[str, int]:
        opened = await client.open(
            site.root_target, mrzap_pb2.Exec(target_user=name, command=WHOAMI)
        )
        assert isinstance(opened, Opened), opened
        return await opened.finish()

    output, code = asyncio.run(_with_client(site, work))
    assert code == 0, output
    assert _normalised(_whoami_of(output)) == _expected(name)
    if name == ANN:
        assert str(grp.getgrnam(GROUP).gr_gid) in output.split()  # the supplementary group


@pytest.mark.parametrize("name", [ANN, BEN])
def test_a_shell_runs_as_the_target_user(site: Site, name: str) -> None:
    async def work(client: Client) -> tuple[str, int]:
        opened = await client.open(
            site.root_target, mrzap_pb2.ShellOpen(target_user=name, term="xterm", rows=24, cols=200)
        )
        assert isinstance(opened, Opened), opened
        await opened.send(mrzap_pb2.ChannelMessage(stdin=f"{WHOAMI}; exit 3\n".encode()))
        return await opened.finish()

    output, code = asyncio.run(_with_client(site, work))
    assert code == 3, output
    assert _normalised(_whoami_of(output)) == _expected(name)


def test_a_user_the_agent_does_not_offer_is_refused_with_a_valid_grant(site: Site) -> None:
    """The policy allows CYD (the broker issues a grant) but the target's own file does not."""

    async def work(client: Client) -> Opened | mrzap_pb2.Reject:
        return await client.open(site.root_target, mrzap_pb2.Exec(target_user=CYD, command="id"))

    reject = asyncio.run(_with_client(site, work))
    assert isinstance(reject, mrzap_pb2.Reject), "the agent ran a user it does not offer"
    assert Reason.from_wire(reject.code) is Reason.ACTION_TARGET_USER_NOT_ALLOWED
    assert "configuration does not allow user" in reject.message


def test_several_connections_at_once(site: Site) -> None:
    """Four connections, as two users, shells and commands: all open before any may finish."""

    async def work(client: Client) -> list[tuple[str, int]]:
        actions: list[Action] = [
            mrzap_pb2.Exec(target_user=ANN, command='read x; echo "$x $(id -un)"'),
            mrzap_pb2.Exec(target_user=BEN, command='read x; echo "$x $(id -un)"'),
            mrzap_pb2.ShellOpen(target_user=ANN, rows=24, cols=200),
            mrzap_pb2.ShellOpen(target_user=BEN, rows=24, cols=200),
        ]
        opened = await asyncio.gather(*(client.open(site.root_target, a) for a in actions))
        assert all(isinstance(o, Opened) for o in opened), opened
        for index, connection in enumerate(opened):
            assert isinstance(connection, Opened)
            line = f"conn-{index}\n" if index < 2 else f'echo "conn-{index} $(id -un)"; exit\n'
            await connection.send(mrzap_pb2.ChannelMessage(stdin=line.encode()))
        return await asyncio.gather(*(o.finish() for o in opened if isinstance(o, Opened)))

    results = asyncio.run(_with_client(site, work))
    for index, ((output, code), user) in enumerate(zip(results, [ANN, BEN, ANN, BEN], strict=True)):
        assert code == 0, output
        assert f"conn-{index} {user}" in _lines(output), output


def test_an_agent_not_running_as_root_serves_only_its_own_user(
    site: Site, user_agent: tuple[str, ChildProcess]
) -> None:
    user_target, agent = user_agent
    assert f"runs as {BEN}, not root: it can serve only {BEN}" in agent.output

    async def run(client: Client) -> tuple[str, int, mrzap_pb2.Reject]:
        own = await client.open(user_target, mrzap_pb2.Exec(target_user=BEN, command=WHOAMI))
        other = await client.open(user_target, mrzap_pb2.Exec(target_user=ANN, command="id"))
        assert isinstance(own, Opened), own
        assert isinstance(other, mrzap_pb2.Reject), "a non-root agent claimed to switch users"
        output, code = await own.finish()
        return output, code, other

    output, code, reject = asyncio.run(_with_client(site, run))
    assert code == 0, output
    assert _normalised(_whoami_of(output)) == _expected(BEN)
    assert Reason.from_wire(reject.code) is Reason.ACTION_TARGET_USER_NOT_ALLOWED
    assert reject.message == (
        f"this agent runs as {BEN!r}, not root, so it can serve only {BEN!r}, not {ANN!r}"
    )
