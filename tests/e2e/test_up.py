"""`mrzapd up`, the embedded default behind `make run`: log in with what its banner says, find
this machine as an online target through the local agent it runs, run the banner's `zli exec`
line as a demo user, and see Ctrl-C and SIGTERM stop every process it started."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import signal
import socket
import stat
import time
from pathlib import Path

import pyotp
import pytest

from mrzap.process import ChildProcess
from tests.accounts import LOGIN

from .conftest import BIN, Cluster, free_port
from .test_login import SECRET, browser_login


def local_targets(cluster: Cluster, home: Path, name: str, state: str) -> list[dict[str, str]]:
    """The targets called `name`, once one of them is in `state` (bounded wait)."""
    deadline = time.monotonic() + 30
    while True:
        listing = cluster.zli(home, "targets", "list", "--json")
        assert listing.wait() == 0, listing.output
        targets = [t for t in json.loads(listing.output) if t["name"] == name]
        if any(t["state"] == state for t in targets) or time.monotonic() > deadline:
            return targets
        time.sleep(0.5)


def descendants(pid: int) -> set[int]:
    """The processes below `pid` right now (children, theirs, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The parent pid is the second field after the parenthesised command name.
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue  # it ended while we looked
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_and_check_children(up: ChildProcess, signum: signal.Signals) -> None:
    """Send `signum` to `mrzapd up` alone; it must exit 0 and leave no process it started."""
    children = descendants(up.process.pid)
    assert len(children) >= 2, children  # at least the IdP and the local agent
    up.process.send_signal(signum)
    assert up.wait() == 0, up.output
    survivors = {pid for pid in children if alive(pid)}
    assert not survivors, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in survivors]


def banner_command(up: ChildProcess, command: str) -> list[str]:
    """The banner's `zli <command> ...` line, as arguments after `zli`."""
    line = up.wait_for(rf"\.venv/bin/zli {command}\b([^\n#]*)").group(0)
    return shlex.split(line)[1:]


def test_up_serves_its_banner_commands_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "mrzap-data"
    port, idp_port = free_port(), free_port()
    ports = ["--port", str(port), "--idp-port", str(idp_port)]
    up = ChildProcess([str(BIN / "mrzapd"), "up", "--data-dir", str(data), *ports])
    try:
        agent_name = up.wait_for(r'local agent\s+target "([^"]+)"').group(1)
        up.wait_for("Press Ctrl-C to stop everything")
        password = up.wait_for(r"alice\s+password (\S+)").group(1)
        ca_file = up.wait_for(r"CA certificate (\S+)\)").group(1)
        issuer = up.wait_for(r"dev IdP\s+(\S+)").group(1)
        me = pwd.getpwuid(os.getuid()).pw_name
        assert banner_command(up, "login") == [
            "login",
            "--server",
            f"127.0.0.1:{port}",
            "--ca-file",
            ca_file,
        ]
        assert f"passwords in {data / 'idp' / 'demo-passwords'}" in up.output
        assert banner_command(up, "connect") == ["connect", f"{me}@{agent_name}"]
        exec_line = banner_command(up, "exec")
        assert exec_line == ["exec", f"{me}@{agent_name}", "--", "uname", "-a"]
        assert banner_command(up, "connections") == ["connections", "list"]
        assert banner_command(up, "recording") == ["recording", "list"]
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "idp" / "demo-passwords").stat().st_mode) == 0o600

        cluster = Cluster(tmp_path, issuer, f"127.0.0.1:{port}", Path(ca_file))
        home = tmp_path / "zli-config"
        zli = browser_login(cluster, home, "alice", password)
        zli.write(pyotp.TOTP(zli.wait_for(SECRET).group(1)).now() + "\n")
        assert zli.wait() == 0, zli.output
        whoami = cluster.zli(home, "whoami")
        assert whoami.wait() == 0, whoami.output
        assert "role:     admin" in whoami.output
        [target] = local_targets(cluster, home, agent_name, "TARGET_STATE_ONLINE")
        assert target["state"] == "TARGET_STATE_ONLINE", target
        assert stat.S_IMODE((data / "agent" / "agent.key").stat().st_mode) == 0o600

        # The banner's exec line, as alice: the demo policy and the agent's local policy agree.
        run = cluster.zli(home, *exec_line)
        assert run.wait(30) == 0, run.output
        assert run.output.startswith("Linux "), run.output
        assert os.uname().nodename in run.output
        # The banner's other commands show that command: its connection (closed by now, so not
        # among the open ones the banner's line lists) and its recording.
        listed = cluster.zli(home, *banner_command(up, "connections"), "--json")
        assert listed.wait(30) == 0, listed.output
        listed = cluster.zli(
            home, *banner_command(up, "connections"), "--state", "closed", "--json"
        )
        assert listed.wait(30) == 0, listed.output
        assert any(c["target_user"] == me for c in json.loads(listed.output)), listed.output
        recordings = cluster.zli(home, *banner_command(up, "recording"), "--json")
        assert recordings.wait(30) == 0, recordings.output
        assert any(
            r["target_user"] == me and r["subject"]["email"] == "alice@example.com"
            for r in json.loads(recordings.output)
        ), recordings.output
        # The demo opens this one Unix user, no other: the policy denies anyone else.
        other = "nobody" if me != "nobody" else "daemon"
        denied = cluster.zli(home, "exec", f"{other}@{agent_name}", "--", "true")
        assert denied.wait(30) == 4, denied.output
        assert "denied" in denied.output

        stop_and_check_children(up, signal.SIGINT)  # what Ctrl-C in the terminal does
        with pytest.raises(ConnectionRefusedError):  # the IdP has gone with the service
            socket.create_connection(("127.0.0.1", idp_port), timeout=2).close()
        assert "mrzap-agent stopped" in (data / "agent" / "agent.log").read_text()

        # Started again, it keeps the same target: the local agent's registration is reused.
        up = ChildProcess([str(BIN / "mrzapd"), "up", "--data-dir", str(data), *ports])
        up.wait_for("Press Ctrl-C to stop everything")
        [again] = local_targets(cluster, home, agent_name, "TARGET_STATE_ONLINE")
        assert again["id"] == target["id"]
        assert again["state"] == "TARGET_STATE_ONLINE", again
        # The demo policy was kept, not written again: still one version.
        listing = cluster.zli(home, "policy", "list", "--json")
        assert listing.wait() == 0, listing.output
        [demo] = [p for p in json.loads(listing.output) if p["name"] == "mrzapd-up-demo"]
        assert int(demo["version"]) == 1, demo
        stop_and_check_children(up, signal.SIGTERM)  # what a service manager does

        if me == LOGIN:
            return  # without root there is no other user to offer
        # Started as root for another user, the demo offers that one instead.
        target_user = ["--target-user", LOGIN]
        up = ChildProcess(
            [str(BIN / "mrzapd"), "up", "--data-dir", str(data), *ports, *target_user]
        )
        assert banner_command(up, "exec") == ["exec", f"{LOGIN}@{agent_name}", "--", "uname", "-a"]
        local_targets(cluster, home, agent_name, "TARGET_STATE_ONLINE")
        run = cluster.zli(home, "exec", f"{LOGIN}@{agent_name}", "--", "id", "-un")
        assert run.wait(30) == 0, run.output
        assert run.output.strip() == LOGIN
        denied = cluster.zli(home, "exec", f"{me}@{agent_name}", "--", "true")
        assert denied.wait(30) == 4, denied.output
        stop_and_check_children(up, signal.SIGTERM)
    finally:
        up.stop()


def test_up_refuses_a_target_user_it_cannot_offer(tmp_path: Path) -> None:
    data = tmp_path / "mrzap-data"
    up = ChildProcess(
        [str(BIN / "mrzapd"), "up", "--data-dir", str(data), "--target-user", "no-such-user-here"]
    )
    assert up.wait(30) == 1, up.output
    assert "--target-user: there is no Unix user 'no-such-user-here' here" in up.output
    assert not data.exists()  # refused before anything was written
