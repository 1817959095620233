"""Connections that end with no client attached: the service learns it from the agent.

Real IdP, `mrzapd serve` and `mrzap-agent run`; alice leaves recorded shells running detached.

- A detached shell that exits by itself: the agent says so (ConnectionEnded) and the broker
  closes the connection's record, which no channel could do.
- An agent started ignoring signals starts shells and commands that do not ignore them.
- The agent is killed and stays away: once its target is TERMINATED (offline past its
  environment's cleanup timeout), the broker closes its connections and ends their recordings
  incomplete, which nothing from the agent can do any more.
- The agent is killed (SIGKILL: no goodbye, no final chunk) and started again: its AgentStarted
  makes the broker close the connections of the old process (they can no longer be re-attached)
  and mark their recordings incomplete, while what was recorded before still verifies; and the
  new process ends the command the old one left running, which nothing else would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from mrzap import keys
from mrzap.recording import verify_recording

from .targets import ME, Site, online_site, register_target
from .test_agents import ONLINE_LINE, run_agent
from .test_recording_server import POLICY, completed, detached_shell

TIMEOUT_S = 15.0
#: The duration of the command left running: a number no other run of any test sleeps for.
_MARK_S = f"987.{uuid.uuid4().int % 10**6:06d}"


def marked_commands() -> set[int]:
    """The processes running `sleep _MARK_S`."""
    wanted = f"sleep\0{_MARK_S}\0".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == wanted:
                found.add(int(entry.name))
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("endings")
    with online_site(
        root, users=("alice",), env="e2e-recording", policy=POLICY, agents=("endings-1",)
    ) as running:
        yield running


def closed_because(site: Site, connection_id: str) -> str:
    """The audit log's events of the connection once its record is closed (waits for it)."""
    deadline = time.monotonic() + TIMEOUT_S
    while connection_id not in site.org.zli("connections", "list", "--state", "closed"):
        assert time.monotonic() < deadline, f"connection {connection_id} is still not closed"
        time.sleep(0.3)
    return site.org.zli("logs", "events", "--connection", connection_id, "--export", "jsonl")


def test_a_detached_shell_that_exits_is_closed(site: Site) -> None:
    script = "echo before-restart-$((1+1)); sleep 5; exit\n"  # exits once detached
    connection_id = asyncio.run(detached_shell(site.org, site.target_id, script))
    assert "the shell ended while detached" in closed_because(site, connection_id)
    recording, _ = asyncio.run(completed(site.org, connection_id))
    assert recording.state == audit_pb.RECORDING_STATE_COMPLETE


def test_an_agent_restart_closes_its_connections_and_ends_their_recordings(site: Site) -> None:
    """It replaces the site's agent with a new process and stops it: later tests start one."""
    org = site.org
    script = "echo before-restart-$((1+1)); sleep 600\n"
    connection_id = asyncio.run(detached_shell(org, site.target_id, script))
    assert connection_id in org.zli("connections", "list")
    command = org.cluster.zli(org.admin, "exec", f"{ME}@endings-1", "--", f"exec sleep {_MARK_S}")
    deadline = time.monotonic() + TIMEOUT_S
    while not (left_running := marked_commands()):
        assert time.monotonic() < deadline, command.output
        time.sleep(0.1)

    os.kill(site.agent.process.pid, signal.SIGKILL)
    site.agent.wait()
    time.sleep(0.5)  # nothing ends it meanwhile: its pipes closed, but it never writes
    assert marked_commands() == left_running
    agent = run_agent(site.root / "endings-1")
    try:
        agent.wait_for(ONLINE_LINE, timeout_s=30)
        recording, chunks = asyncio.run(completed(org, connection_id))
        events = closed_because(site, connection_id)
        assert command.wait(TIMEOUT_S) != 0, command.output  # its channel ended with the agent
    finally:
        agent.stop()
        command.stop()
        print(agent.output)  # shown when the test failed

    assert not marked_commands()  # ended before the new agent came online
    assert "ended 1 process(es) the previous agent process left running" in agent.output

    assert recording.state == audit_pb.RECORDING_STATE_INCOMPLETE
    public_key = keys.public_key_from_bytes(recording.agent_public_key)
    verified = verify_recording(chunks, public_key, require_complete=False)
    assert "before-restart-2" in "".join(e.data for e in verified.events if e.code == "o")
    assert "the agent restarted" in events


def test_what_an_agent_starts_does_not_inherit_the_signals_it_was_started_ignoring(
    site: Site,
) -> None:
    """As under nohup or as a script's background job: the agent is started with SIGHUP, SIGINT
    and SIGQUIT ignored, yet what it runs sees them at their defaults, as in an SSH session."""
    ignoring = ["sh", "-c", "trap '' HUP INT QUIT; exec \"$@\"", "sh"]
    site.agent.stop()  # one agent at a time on a configuration directory (if still running)
    agent = run_agent(site.root / "endings-1", wrapper=ignoring)
    try:
        agent.wait_for(ONLINE_LINE, timeout_s=30)
        status = site.org.zli(
            "exec", f"{ME}@endings-1", "--", "grep", "SigIgn", "/proc/self/status"
        )
    finally:
        agent.stop()
        print(agent.output)  # shown when the test failed
    ignored = int(status.split()[1], 16)
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        assert not ignored & (1 << (signum - 1)), f"{signum.name} ignored: {status}"


def test_a_terminated_target_has_its_connections_closed_and_recordings_ended(site: Site) -> None:
    """A target of its own, in an environment whose cleanup timeout is 2 s; its agent is
    started again at the end, which also ends the shell the killed one left running."""
    org = site.org
    org.zli("env", "create", "e2e-short", "--offline-cleanup", "2s")
    directory = site.root / "endings-short"
    register_target(
        org, directory, "endings-short", org.registration_key("e2e-short"), target_users=(ME,)
    )
    policy = site.root / "policy-short.yaml"
    policy.write_text(POLICY.replace("[e2e-recording]", "[e2e-recording, e2e-short]"))
    org.zli("policy", "import", str(policy))
    agent = run_agent(directory)
    try:
        target_id = agent.wait_for(ONLINE_LINE, timeout_s=30).group(1)
        script = "echo before-restart-$((1+1)); sleep 600\n"
        connection_id = asyncio.run(detached_shell(org, target_id, script))
        os.kill(agent.process.pid, signal.SIGKILL)
        agent.wait()
        org.wait_state(target_id, "TERMINATED", timeout_s=30)
        events = closed_because(site, connection_id)
        recording, chunks = asyncio.run(completed(org, connection_id))
    finally:
        agent.stop()
        print(agent.output)  # shown when the test failed
        cleaner = run_agent(directory)
        try:
            cleaner.wait_for(ONLINE_LINE, timeout_s=30)
        finally:
            cleaner.stop()

    assert "the target was terminated" in events
    assert recording.state == audit_pb.RECORDING_STATE_INCOMPLETE
    public_key = keys.public_key_from_bytes(recording.agent_public_key)
    verified = verify_recording(chunks, public_key, require_complete=False)
    assert "before-restart-2" in "".join(e.data for e in verified.events if e.code == "o")
