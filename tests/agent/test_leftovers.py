"""Commands an agent killed outright left running, ended by the next agent process.

Real processes stand in for the commands: each leads its own process group, as the agent's do.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent._leftovers import CommandLedger, end_leftovers

WAIT_S = 10.0


@pytest.fixture
def commands() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started commands, each its own process group; killed after the test whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start(
    commands: list[subprocess.Popen[bytes]], script: str, stdin: int | None = None
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["sh", "-c", script], start_new_session=True, stdin=stdin)
    commands.append(process)
    return process


def group(pgid: int) -> set[int]:
    """The live processes of process group `pgid` (zombies excluded)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def eventually_has(pgid: int, size: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(group(pgid)) != size:
        assert time.monotonic() < deadline, f"group {pgid}: {group(pgid)}"
        time.sleep(0.05)


def exited(process: subprocess.Popen[bytes]) -> bool:
    try:
        process.wait(WAIT_S)
    except subprocess.TimeoutExpired:
        return False
    return True


@pytest.mark.asyncio
async def test_a_listed_command_and_its_children_are_ended(
    tmp_path: Path, commands: list[subprocess.Popen[bytes]]
) -> None:
    ledger_path = tmp_path / "ledger.json"
    command = start(commands, "sleep 300 & exec sleep 301")
    eventually_has(command.pid, 2)
    CommandLedger(ledger_path).add(command.pid)  # and the agent is killed: nothing removes it
    assert stat.S_IMODE(ledger_path.stat().st_mode) == 0o600

    assert await end_leftovers(ledger_path) == 2
    assert exited(command)
    assert command.returncode == -15  # SIGTERM was enough
    eventually_has(command.pid, 0)
    assert not ledger_path.exists()
    assert await end_leftovers(ledger_path) == 0


@pytest.mark.asyncio
async def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path, commands: list[subprocess.Popen[bytes]]
) -> None:
    ledger_path = tmp_path / "ledger.json"
    command = start(commands, "trap '' TERM; while :; do sleep 0.05; done")
    CommandLedger(ledger_path).add(command.pid)
    assert await end_leftovers(ledger_path, grace_s=0.3) >= 1
    assert exited(command)
    assert command.returncode == -9


@pytest.mark.asyncio
async def test_a_command_that_ended_normally_is_not_listed(
    tmp_path: Path, commands: list[subprocess.Popen[bytes]]
) -> None:
    ledger_path = tmp_path / "ledger.json"
    ledger = CommandLedger(ledger_path)
    command = start(commands, "exec sleep 300")
    ledger.add(command.pid)
    ledger.remove(command.pid)
    assert json.loads(ledger_path.read_text())["groups"] == []
    assert await end_leftovers(ledger_path) == 0
    assert command.poll() is None


@pytest.mark.asyncio
async def test_a_group_whose_leader_exited_is_left_alone(
    tmp_path: Path, commands: list[subprocess.Popen[bytes]]
) -> None:
    """As under a live agent, which forgets a command once its leader exits; and the group's
    id could belong to another group by then."""
    ledger_path = tmp_path / "ledger.json"
    command = start(commands, "sleep 300 & read line", stdin=subprocess.PIPE)
    eventually_has(command.pid, 2)
    CommandLedger(ledger_path).add(command.pid)
    assert command.stdin is not None
    command.stdin.close()  # the leader reads end of file and exits; its `sleep` runs on
    assert exited(command)
    assert await end_leftovers(ledger_path) == 0
    eventually_has(command.pid, 1)


def from_another_boot(ledger: dict[str, Any]) -> str:
    return json.dumps({**ledger, "boot_id": "00000000-0000-0000-0000-000000000000"})


def with_another_start_time(ledger: dict[str, Any]) -> str:
    """As if the listed command had ended and its pid had gone to another process."""
    groups = [[pid, started + 1] for pid, started in ledger["groups"]]
    return json.dumps({**ledger, "groups": groups})


def cut_short(ledger: dict[str, Any]) -> str:
    return json.dumps(ledger)[:12]


@pytest.mark.parametrize("rewrite", [from_another_boot, with_another_start_time, cut_short])
@pytest.mark.asyncio
async def test_a_ledger_that_does_not_name_the_process_ends_nothing(
    tmp_path: Path,
    commands: list[subprocess.Popen[bytes]],
    rewrite: Callable[[dict[str, Any]], str],
) -> None:
    ledger_path = tmp_path / "ledger.json"
    command = start(commands, "exec sleep 300")
    CommandLedger(ledger_path).add(command.pid)
    ledger_path.write_text(rewrite(json.loads(ledger_path.read_text())))
    assert await end_leftovers(ledger_path) == 0
    assert command.poll() is None
    assert not ledger_path.exists()
