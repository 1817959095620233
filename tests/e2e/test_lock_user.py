"""Locking a user end to end: real IdP, `mrzapd serve`, a running `mrzap-agent` and `zli`.

alice (logged in with MFA through the real IdP) has a detached shell and a long command running
on a real agent through the broker. olivia, an administrator, runs `zli lock user
alice@example.com`: the service-signed revocation reaches the agent over its control stream,
the command's channel ends with ABORTED, both processes on the target are gone (the detached shell
only the agent could have ended), and alice's next call and next login are refused with the
lock's message. `zli unlock user` lets her log in again. bob, not an administrator, cannot lock
anyone.

The client side of alice's channels is driven from the test with mrzap.handshake and
mrzap.channel over her own zli session, as in test_connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pyotp
import pytest

from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from idp.testing import http_request
from mrzap.process import ChildProcess

from .client_channel import ClientChannel, broker, open_channel
from .targets import ME, online_site
from .test_admin_cli import zli
from .test_agents import Org
from .test_login import log_in, start_login

TIMEOUT_S = 20.0
LOCKED = "this user is locked by an administrator"
POLICY = f"""\
name: alice-exec
kind: target_connect
subjects:
  emails: [alice@example.com]
targets:
  environments: [e2e-lock]
target_users: [{ME}]
verbs: [shell, exec]
max_session_duration: 1h
"""


@dataclasses.dataclass
class LockOrg:
    """The cluster with an online agent; olivia administers, alice and bob are users."""

    org: Org
    """The cluster, with olivia's zli home as the administrator's."""
    target_id: str
    agent: ChildProcess
    """The running `mrzap-agent run` (its output says which revocations are in force)."""
    homes: dict[str, Path]
    """Each user's zli home."""
    secrets: dict[str, str]
    """Each user's TOTP secret."""

    def zli(self, user: str, *args: str) -> tuple[int, str]:
        """Run zli as `user` to the end; its exit code and output."""
        return zli(self.org.cluster, self.homes[user], *args)


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockOrg]:
    root = tmp_path_factory.mktemp("lock")
    with online_site(
        root, users=("olivia", "alice", "bob"), env="e2e-lock", policy=POLICY, agents=("lock-1",)
    ) as site:
        yield LockOrg(site.org, site.target_id, site.agent, site.homes, site.secrets)


class Running:
    """A connection through the broker: its id, and how to read its frames."""

    def __init__(self, channel: ClientChannel) -> None:
        self.channel = channel
        self.connection_id = channel.connection_id

    async def stdout_until(self, pattern: str) -> re.Match[bytes]:
        """Read the output until `pattern` matches it."""
        out = bytearray()
        while (found := re.search(pattern.encode(), out)) is None:
            message = await self.channel.receive()
            assert message is not None, f"the channel ended; output {bytes(out)!r}"
            out += message.stdout
        return found

    async def end(self) -> grpc.StatusCode:
        """Read until the channel ends; the status it ended with (frames are dropped)."""
        try:
            while await self.channel.call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


async def connect(
    lock_org: LockOrg,
    user: str,
    action: mrzap_pb2.Exec | mrzap_pb2.ShellOpen,
    stub: pb_grpc.BrokerServiceAsyncStub,
) -> Running:
    """Open a connection through the broker with `user`'s zli session (stdin stays open)."""
    channel = await open_channel(
        stub,
        lock_org.homes[user],
        lock_org.target_id,
        action,
        target_user=ME,
        timeout_s=TIMEOUT_S,
        call_timeout_s=60,
    )
    return Running(channel)


def _gone(pid: int) -> bool:
    """Whether the process has exited (a zombie not yet reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not _gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs on the target"
        time.sleep(0.1)


def test_a_user_who_is_not_an_administrator_cannot_lock(org: LockOrg) -> None:
    code, output = org.zli("bob", "lock", "user", "olivia@example.com", "--reason", "coup")
    assert code == 4, output
    assert "only administrators may do this" in output
    code, output = org.zli("bob", "unlock", "user", "bob@example.com")
    assert code == 4, output
    # Nothing happened: olivia still works.
    assert org.zli("olivia", "whoami")[0] == 0


def test_locking_ends_the_users_connections_and_refuses_them_until_unlocked(
    org: LockOrg,
) -> None:
    async def lock_while_running() -> tuple[list[str], list[int], str, grpc.StatusCode]:
        # A shell, left detached: only the agent can end it now, so its end proves that the
        # revocation reached the agent (a client's channel ending does not end a shell).
        async with broker(org.org.cluster) as stub:
            shell = await connect(org, "alice", mrzap_pb2.ShellOpen(target_user=ME), stub)
            started = rf"shell {re.escape(shell.connection_id)} started as \S+ \(pid (\d+)\)"
            shell_pid = int((await asyncio.to_thread(org.agent.wait_for, started)).group(1))
        # A command whose channel is still open when the lock comes.
        async with broker(org.org.cluster) as stub:
            command = await connect(
                org,
                "alice",
                mrzap_pb2.Exec(target_user=ME, command="echo pid=$$; exec sleep 300"),
                stub,
            )
            exec_pid = int((await command.stdout_until(r"pid=(\d+)\n")).group(1))
            assert not _gone(shell_pid)
            assert not _gone(exec_pid)
            code, output = await asyncio.to_thread(
                org.zli, "olivia", "lock", "user", "alice@example.com", "--reason", "e2e test"
            )
            assert code == 0, output
            status = await asyncio.wait_for(command.end(), TIMEOUT_S)
            ids = [shell.connection_id, command.connection_id]
            return ids, [shell_pid, exec_pid], output, status

    connection_ids, pids, output, status = asyncio.run(lock_while_running())
    assert "Locked alice@example.com" in output
    revocation = re.search(r"Revocation ([0-9a-f-]{36}) sent to every agent", output)
    assert revocation, output
    assert status is grpc.StatusCode.ABORTED
    ended = re.search(r"Connections ended: (.+)", output)
    assert ended, output
    assert sorted(ended.group(1).split(", ")) == sorted(connection_ids)
    for pid in pids:
        _wait_gone(pid)
    org.agent.wait_for(f"revocation {revocation.group(1)} in force")

    # alice's next call and her next login are refused with the lock's message.
    code, output = org.zli("alice", "whoami")
    assert (code, LOCKED in output) == (4, True), output
    zli_login, url = start_login(org.org.cluster, org.homes["alice"])
    http_request(log_in(url, "alice"))
    assert zli_login.wait() == 4, zli_login.output
    assert LOCKED in zli_login.output
    # Whatever the policies say, an administrator's explain says she gets nothing, and why.
    explain = ("policy", "explain", "--user", "alice@example.com", "--target", "lock-1")
    code, output = org.zli("olivia", *explain, "--target-user", ME)
    assert (code, LOCKED in output) == (11, True), output

    # Unlocked, she logs in again (with her next TOTP code; the old session stays ended).
    code, output = org.zli("olivia", "unlock", "user", "alice@example.com")
    assert code == 0, output
    assert "Unlocked alice@example.com" in output
    zli_login, url = start_login(org.org.cluster, org.homes["alice"])
    http_request(log_in(url, "alice"))
    zli_login.write(pyotp.TOTP(org.secrets["alice"]).at(time.time() + 30) + "\n")
    assert zli_login.wait() == 0, zli_login.output
    code, output = org.zli("alice", "whoami")
    assert code == 0, output
    assert "alice@example.com" in output
    assert org.zli("olivia", *explain, "--target-user", ME)[0] == 0
