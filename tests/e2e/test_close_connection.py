"""Closing a connection end to end: real IdP, `mrzapd serve`, a `mrzap-agent run` process, users
who logged in with MFA (`zli login`), and `zli connections list|close` as users run them.

The running command's client is driven from the test with mrzap.handshake over the user's zli
session (like tests/e2e/test_connections.py), so the test can hold its channel open while zli
closes the connection, and then see how the channel ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2

from .client_channel import broker, metadata, open_channel
from .targets import ME, online_site
from .test_admin_cli import zli
from .test_agents import Org

TIMEOUT_S = 10.0
POLICY = f"""\
name: close-e2e
kind: target_connect
subjects:
  emails: [alice@example.com, bob@example.com]
targets:
  environments: [e2e-close]
target_users: [{ME}]
verbs: [shell, exec]
max_session_duration: 1h
"""


class Users:
    """The organisation, alice (an administrator), bob (a user) and the target's id."""

    def __init__(self, org: Org, bob: Path, target_id: str) -> None:
        self.org = org
        self.alice = org.admin
        self.bob = bob
        self.target_id = target_id


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Users]:
    root = tmp_path_factory.mktemp("close")
    with online_site(
        root, users=("alice", "bob"), env="e2e-close", policy=POLICY, agents=("web-close",)
    ) as site:
        yield Users(site.org, site.homes["bob"], site.target_id)


async def long_command(
    stub: pb_grpc.BrokerServiceAsyncStub, home: Path, target_id: str
) -> tuple[Any, str, int]:
    """`sleep 300` running on the target; (the Channel call, connection id, its pid)."""
    call, connection_id, pid = await start(
        stub, home, target_id, mrzap_pb2.Exec(target_user=ME, command="exec sleep 300")
    )
    # The pid is the agent's word: see that it names the command before trusting it gone.
    assert await asyncio.to_thread(runs_sleep_300, pid), f"process {pid} is not `sleep 300`"
    return call, connection_id, pid


async def start(
    stub: pb_grpc.BrokerServiceAsyncStub,
    home: Path,
    target_id: str,
    action: mrzap_pb2.Exec | mrzap_pb2.ShellOpen | mrzap_pb2.ShellAttach,
) -> tuple[Any, str, int]:
    """A channel whose SYN the agent accepted; (the Channel call, connection id, the pid of the
    shell or command on the target, from the SYN-ACK)."""
    channel = await open_channel(
        stub, home, target_id, action, target_user=ME, timeout_s=TIMEOUT_S, call_timeout_s=60
    )
    opened, established = channel.opened, channel.established
    attach = action.connection_id if isinstance(action, mrzap_pb2.ShellAttach) else ""
    # A new connection is named by its channel; a re-attach keeps the connection's id.
    assert opened.connection_id == (attach or opened.channel_id)
    # The agent names the connection as the broker does.
    assert established.synack.result.connection_id == opened.connection_id
    return channel.call, opened.connection_id, established.synack.result.pid


async def ending(call: Any) -> grpc.StatusCode:  # noqa: ANN401 - grpc's call
    """How the channel call ends (its frames are not read: they are sealed for the client)."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        while await asyncio.wait_for(call.read(), TIMEOUT_S) is not grpc.aio.EOF:
            pass
    code: grpc.StatusCode = await call.code()
    return code


async def zli_as(users: Users, home: Path, *args: str) -> tuple[int, str]:
    """Run zli as the owner of `home` without blocking the event loop (channels stay served)."""
    return await asyncio.to_thread(zli, users.org.cluster, home, *args)


async def listed_state(users: Users, home: Path, connection_id: str, state: str) -> str:
    """`zli connections list` once it shows the connection in `state` (the broker writes
    channel events just after relaying them); its output."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        code, listed = await zli_as(users, home, "connections", "list")
        assert code == 0, listed
        line = next((line for line in listed.splitlines() if connection_id in line), "")
        if f" {state} " in line or time.monotonic() > deadline:
            return line
        await asyncio.sleep(0.2)


def runs_sleep_300(pid: int) -> bool:
    """Whether process `pid` runs `sleep 300` (once its shell has exec'd it: a bounded wait)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00300\x00":
            return True
        time.sleep(0.05)
    return False


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (waiting a bounded time for it)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_zli_lists_and_closes_a_running_command_which_ends_on_the_target(users: Users) -> None:
    async def scenario() -> None:
        async with broker(users.org.cluster) as stub:
            call, connection_id, pid = await long_command(stub, users.bob, users.target_id)
            code, listed = await zli_as(users, users.bob, "connections", "list")
            assert code == 0, listed
            assert connection_id in listed
            assert "open" in listed
            assert "web-close" in listed  # a target bob may reach: shown by name
            code, listed = await zli_as(
                users, users.bob, "connections", "list", "--target", users.target_id
            )
            assert connection_id in listed, listed

            code, output = await zli_as(
                users, users.bob, "connections", "close", connection_id, "--reason", "lunch"
            )
            assert code == 0, output
            assert f"Connection {connection_id} closed." in output
            # The client's channel ends ABORTED, and the command is gone from the target.
            assert await ending(call) is grpc.StatusCode.ABORTED
            assert await asyncio.to_thread(gone, pid), f"process {pid} still runs"

            code, listed = await zli_as(users, users.bob, "connections", "list")
            assert code == 0, listed
            assert connection_id not in listed
            code, listed = await zli_as(
                users, users.bob, "connections", "list", "--state", "closed"
            )
            assert connection_id in listed

    asyncio.run(scenario())


def test_a_user_cannot_see_close_or_reattach_to_anothers_connection(users: Users) -> None:
    async def scenario() -> None:
        async with broker(users.org.cluster) as stub:
            call, connection_id, pid = await long_command(stub, users.alice, users.target_id)

            code, listed = await zli_as(users, users.bob, "connections", "list")
            assert code == 0, listed
            assert connection_id not in listed
            code, output = await zli_as(users, users.bob, "connections", "list", "--all")
            assert code == 4, output  # PermissionDenied
            code, output = await zli_as(users, users.bob, "connections", "close", connection_id)
            assert code == 5, output  # NotFound: the same answer as for an unknown id
            async with broker(users.org.cluster) as bobs_stub:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await bobs_stub.OpenConnection(
                        pb.OpenConnectionRequest(
                            target_id=users.target_id,
                            verb=mrzap_pb2.VERB_SHELL,
                            target_user=ME,
                            connection_id=connection_id,
                        ),
                        metadata=metadata(users.bob),
                        timeout=TIMEOUT_S,
                    )
                assert refused.value.code() is grpc.StatusCode.NOT_FOUND

            # Alice's command was untouched; as an administrator she sees it among everyone's.
            os.kill(pid, 0)
            code, listed = await zli_as(users, users.alice, "connections", "list", "--all")
            assert code == 0, listed
            assert connection_id in listed
            assert "alice@example.com" in listed
            assert "web-close" in listed  # administrators see target names
            code, output = await zli_as(users, users.alice, "connections", "close", connection_id)
            assert code == 0, output
            assert await ending(call) is grpc.StatusCode.ABORTED
            assert await asyncio.to_thread(gone, pid)

    asyncio.run(scenario())


def test_a_detached_shell_is_listed_reattached_and_closed(users: Users) -> None:
    async def scenario() -> None:
        async with broker(users.org.cluster) as stub:
            shell = mrzap_pb2.ShellOpen(target_user=ME, term="xterm", cols=80, rows=24)
            call, connection_id, pid = await start(stub, users.bob, users.target_id, shell)
            call.cancel()  # the client goes away; the shell stays
            line = await listed_state(users, users.bob, connection_id, "detached")
            assert " detached " in line, line
            os.kill(pid, 0)

            attach = mrzap_pb2.ShellAttach(
                target_user=ME, connection_id=connection_id, cols=80, rows=24
            )
            again, attached_id, attached_pid = await start(stub, users.bob, users.target_id, attach)
            assert (attached_id, attached_pid) == (connection_id, pid)
            line = await listed_state(users, users.bob, connection_id, "open")
            assert " open " in line, line

            code, output = await zli_as(users, users.bob, "connections", "close", connection_id)
            assert code == 0, output
            assert await ending(again) is grpc.StatusCode.ABORTED
            assert await asyncio.to_thread(gone, pid), f"shell {pid} still runs"

    asyncio.run(scenario())
