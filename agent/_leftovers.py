"""Commands an agent killed outright left running, ended by the next agent process.

A clean stop ends every shell and command first (`Sessions.close_all`); an agent killed outright
(SIGKILL, the OOM killer) cannot. Its shells need nothing more: their terminals close with it,
which hangs them up as closing them would. A command only learns of its closed pipes when it next
writes, so `sleep 300` would run on, while the broker, told by the next agent process that it
started afresh, closes the command's record as ended. So every command leads a process group of
its own (`start_new_session`), and while one runs the agent lists it in a ledger file in its
configuration directory (mode 0600): the boot it runs in and the leader's pid and start time.
The next agent process, before it serves anything, ends every process still in a listed group
as `ExecProcess.close` would have: SIGTERM, then SIGKILL after a grace period.

Pids are reused, so a group counts only if the ledger is of this boot (the kernel's boot id) and
the group's leader still runs with the start time listed (then no other group can have its id);
each process is signalled through a pidfd opened before it is checked, so a pid reused meanwhile
is never signalled. A group whose leader has exited is left alone, as it is under a live agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from mrzap.keys import write_secret_file

__all__ = ["LEDGER_FILE", "CommandLedger", "end_leftovers"]

_log = logging.getLogger("mrzap.agent.leftovers")

#: The ledger's name in the agent's configuration directory.
LEDGER_FILE = "running-commands.json"
#: How long leftovers get after SIGTERM before SIGKILL (as in `ExecProcess.close`).
_GRACE_S = 2.0
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""  # no procfs entry for it: the start-time checks still hold


class _Process(NamedTuple):
    group: int
    started: int
    """Clock ticks since boot."""


def _process(pid: int) -> _Process | None:
    """What /proc/PID/stat says of process `pid`, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3 of proc(5), the process group 5, starttime 22.
    return _Process(int(fields[2]), int(fields[19]))


class CommandLedger:
    """The running commands of this agent process, kept in a file for the next one."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._boot_id = _boot_id()
        self._groups: dict[int, int] = {}

    def add(self, pid: int) -> None:
        """List the command whose process group `pid` leads (if it has not ended already)."""
        process = _process(pid)
        if process is not None:
            self._groups[pid] = process.started
            self._write()

    def remove(self, pid: int) -> None:
        """Forget the command `pid` (it has exited)."""
        if self._groups.pop(pid, None) is not None:
            self._write()

    def _write(self) -> None:
        # Atomic, but not synced: what it guards against is the agent dying, not the machine
        # (after a reboot the boot id differs and nothing is left to end anyway).
        data = {"boot_id": self._boot_id, "groups": sorted(self._groups.items())}
        try:
            write_secret_file(self._path, json.dumps(data).encode(), sync=False)
        except OSError as error:
            # Commands still run; only a crash would leave them behind unnoticed.
            _log.warning("cannot update the command ledger %s: %s", self._path, error)


def _listed(path: Path) -> dict[int, int]:
    """The groups a previous agent process listed in this boot: leader pid -> start time."""
    try:
        data = json.loads(path.read_text())
        if data["boot_id"] != _boot_id():
            return {}
        return {int(pid): int(start) for pid, start in data["groups"]}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as error:
        _log.warning("ignoring the unreadable command ledger %s: %s", path, error)
        return {}


def _open(pid: int, wanted: Callable[[int, _Process], bool]) -> int | None:
    """A pidfd for process `pid` if it runs and is `wanted`. A pidfd names one process for good:
    read after opening it, /proc describes that process, and no later process reusing the pid
    is ever signalled through it."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None  # gone
    process = _process(pid)
    if process is not None and wanted(pid, process):
        return fd
    os.close(fd)
    return None


def _open_members(groups: dict[int, int]) -> dict[int, int]:
    """pid -> pidfd of every process in one of `groups` whose leader still runs.

    A group whose leader has exited is left alone, as `Sessions` leaves it when the leader
    exits under a live agent; and while the leader runs, no other group can have its id.
    """

    def listed_leader(pid: int, process: _Process) -> bool:
        return process.group == pid and groups.get(pid) == process.started

    live = set()
    for leader in groups:
        fd = _open(leader, listed_leader)
        if fd is not None:
            live.add(leader)
            os.close(fd)
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fd = _open(int(entry.name), lambda _, process: process.group in live)
            if fd is not None:
                found[int(entry.name)] = fd
    return found


def _take_leftovers(path: Path) -> dict[int, int]:
    """pid -> pidfd of what the groups listed at `path` left running; empties the ledger."""
    groups = _listed(path)
    path.unlink(missing_ok=True)
    return _open_members(groups) if groups else {}


async def _exited(fd: int) -> None:
    """Until the process behind pidfd `fd` has exited (a pidfd turns readable then)."""
    loop = asyncio.get_running_loop()
    exited = loop.create_future()

    def on_readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)


def _send(fds: Iterable[int], *signums: signal.Signals) -> None:
    for fd in fds:
        for signum in signums:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signum)


async def end_leftovers(path: Path, *, grace_s: float = _GRACE_S) -> int:
    """End what the commands listed in the ledger at `path` left running; how many processes.

    The ledger is emptied, for this process's `CommandLedger` to fill.
    """
    left = await asyncio.to_thread(_take_leftovers, path)
    if not left:
        return 0
    try:
        _send(left.values(), signal.SIGTERM)
        waits = {pid: asyncio.ensure_future(_exited(fd)) for pid, fd in left.items()}
        await asyncio.wait(waits.values(), timeout=grace_s)
        _send((left[pid] for pid, wait in waits.items() if not wait.done()), signal.SIGKILL)
        for wait in waits.values():
            wait.cancel()
        # Each wait stops watching its pidfd as it ends: before the pidfd is closed.
        await asyncio.gather(*waits.values(), return_exceptions=True)
    finally:
        for fd in left.values():
            os.close(fd)
    _log.info(
        "ended %d process(es) the previous agent process left running: %s",
        len(left),
        ", ".join(map(str, sorted(left))),
    )
    return len(left)
