"""`zli recording` and `zli logs` as users run them, on real recordings: real IdP, `mrzapd serve`,
a registered `mrzap-agent run` that records, and zli as separate processes — `zli connect` on a
real pseudo-terminal (pexpect) for the recorded shell, and `zli recording watch` beside it.

Alice (an administrator) watches her own shell live, then lists, verifies (online and offline
from a raw export), plays and exports it, and finds the command she typed in the command log.
Bob (a user) sees his own recordings and commands only.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect  # type: ignore[import-untyped]  # it ships no type information
import pytest

from .conftest import BIN, free_port, zli_terminal
from .targets import ME, online_site
from .test_agents import Org

#: The first test also starts the organisation and records a session; each zli call is a process.
pytestmark = pytest.mark.timeout(240)

TIMEOUT_S = 20
ENV = "e2e-recordings"
POLICY = f"""\
name: shells
kind: target_connect
subjects:
  emails: [alice@example.com, bob@example.com]
targets:
  environments: [{ENV}]
target_users: [{ME}]
verbs: [shell, exec]
max_session_duration: 1h
---
name: record-everything
kind: session_recording
subjects:
  emails: [alice@example.com, bob@example.com]
targets:
  environments: [{ENV}]
record_input: true
"""


@dataclasses.dataclass(frozen=True)
class People:
    """The cluster with alice (an administrator, `org.admin`) and bob (a user) logged in."""

    org: Org
    bob: Path
    target_id: str
    """web-1's id: users who are not administrators name targets by id."""


@dataclasses.dataclass(frozen=True)
class Recorded:
    """Alice's recorded shell, and what her live view showed while it ran."""

    org: Org
    connection_id: str
    watched: str


def _env(org: Org, home: Path) -> dict[str, str]:
    return org.cluster.env(home, TERM="xterm")


def zli(org: Org, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run zli as the user whose zli home is `home`, to the end."""
    return subprocess.run(
        [str(BIN / "zli"), *args],
        capture_output=True,
        text=True,
        env=_env(org, home),
        timeout=TIMEOUT_S * 2,
        check=False,
    )


def spawn(org: Org, home: Path, *args: str) -> pexpect.spawn:
    """zli on a fresh pseudo-terminal."""
    return zli_terminal(list(args), _env(org, home), TIMEOUT_S)


def finish(child: pexpect.spawn) -> int:
    """zli's exit status, once it has ended."""
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return int(child.exitstatus)


def recordings(org: Org, home: Path) -> list[dict[str, object]]:
    """`zli recording list --all --json` as the user whose home is `home`."""
    listed = zli(org, home, "recording", "list", "--all", "--json")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert isinstance(found, list)
    return found


def wait_for_recording(org: Org, home: Path, state: str, connection_id: str = "") -> str:
    """The id of a recording (any, or `connection_id`) once it is in `state` (the agent sends
    chunks within about a second, and the broker stores them as they come)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        fresh = [
            r
            for r in recordings(org, home)
            if connection_id in ("", r["connection_id"])
            and r.get("state") == f"RECORDING_STATE_{state}"
        ]
        if fresh:
            return str(fresh[0]["connection_id"])
        assert time.monotonic() < deadline, f"no new {state} recording appeared"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Iterator[People]:
    """The cluster with alice (admin) and bob (user), and web-1's agent online, recording."""
    root = tmp_path_factory.mktemp("recordings")
    with online_site(root, users=("alice", "bob"), env=ENV, policy=POLICY) as site:
        yield People(site.org, site.homes["bob"], site.target_id)


@pytest.fixture(scope="module")
def recorded(people: People) -> Recorded:
    """Alice's recorded shell, with `zli recording watch` started while it ran."""
    org = people.org
    shell = spawn(org, org.admin, "connect", f"{ME}@web-1")
    shell.sendline("echo ready-$((20+1))")
    shell.expect("ready-21")
    connection_id = wait_for_recording(org, org.admin, "LIVE")
    viewer = spawn(org, org.admin, "recording", "watch", connection_id)
    viewer.logfile_read = seen = io.BytesIO()
    viewer.expect("ready-21")  # what the shell showed before the viewer came
    shell.sendline("echo live-$((6*7))")
    shell.expect("live-42")
    viewer.expect("live-42")  # ...and what it shows now, while it runs
    quitter = spawn(org, org.admin, "recording", "watch", connection_id)
    quitter.expect("live-42")
    quitter.sendintr()  # Ctrl-C leaves a live view at once, and cleanly
    quitter.expect("stopped watching")
    assert finish(quitter) == 0
    shell.sendline("exit")
    assert finish(shell) == 0
    viewer.expect(r"the session ended \((\d+) chunks verified\)")
    assert finish(viewer) == 0
    watched = seen.getvalue().decode(errors="replace")
    wait_for_recording(org, org.admin, "COMPLETE", connection_id)
    return Recorded(org, connection_id, watched)


def test_a_live_view_shows_the_session_as_it_runs(recorded: Recorded) -> None:
    # What came before the viewer started, what came while it watched, and the end.
    watched = recorded.watched
    assert watched.index("ready-21") < watched.index("live-42") < watched.index("logout")
    assert watched.rstrip().endswith("chunks verified).")


def test_the_recording_is_listed_verified_played_and_exported(
    recorded: Recorded, tmp_path: Path
) -> None:
    org, alice, connection_id = recorded.org, recorded.org.admin, recorded.connection_id
    listed = zli(org, alice, "recording", "list", "--target", "web-1")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(connection_id)]
    assert row.split()[1:4] == ["alice@example.com", "web-1", ME]
    assert row.split()[-2] == "complete"

    verified = zli(org, alice, "recording", "verify", connection_id, "--require-complete")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"OK: recording {connection_id}: ")
    assert "complete; signed by agent key SHA256:" in verified.stdout

    played = zli(
        org, alice, "recording", "play", connection_id, "--speed", "50", "--idle-limit", "0.5"
    )
    assert played.returncode == 0, played.stderr
    assert "live-42" in played.stdout

    cast = tmp_path / "session.cast"
    exported = zli(org, alice, "recording", "export", connection_id, "-o", str(cast))
    assert exported.returncode == 0, exported.stderr
    asciinema = subprocess.run(
        [str(BIN / "asciinema"), "cat", str(cast)], capture_output=True, timeout=30, check=True
    )
    assert b"ready-21" in asciinema.stdout
    assert b"live-42" in asciinema.stdout


def test_a_raw_export_verifies_with_no_service_and_catches_tampering(
    recorded: Recorded, tmp_path: Path
) -> None:
    org, connection_id = recorded.org, recorded.connection_id
    raw = tmp_path / "session.mrzap"
    saved = zli(org, org.admin, "recording", "export", connection_id, "--raw", str(raw))
    assert saved.returncode == 0, saved.stderr

    # No login and no reachable service: verification needs only the file.
    offline = {**os.environ, "MRZAP_CONFIG_DIR": str(tmp_path / "nobody")}
    offline["MRZAP_SERVER"] = f"127.0.0.1:{free_port()}"

    def verify() -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "zli"), "recording", "verify", "--file", str(raw)]
        return subprocess.run(argv, capture_output=True, text=True, env=offline, timeout=30)

    good = verify()
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith(f"OK: recording {connection_id}: ")

    lines = raw.read_text().splitlines()
    entry = json.loads(lines[1])  # chunk 0, which holds the header
    signed = bytearray(base64.b64decode(entry["signed"]))
    signed[len(signed) // 2] ^= 0x01
    entry["signed"] = base64.b64encode(bytes(signed)).decode()
    raw.write_text("\n".join([lines[0], json.dumps(entry), *lines[2:]]) + "\n")
    bad = verify()
    assert bad.returncode == 8
    assert f"recording {connection_id} FAILED verification:" in bad.stderr
    assert "at chunk 0" in bad.stderr


def test_the_command_log_finds_what_was_typed(recorded: Recorded) -> None:
    org, alice = recorded.org, recorded.org.admin
    found = zli(org, alice, "logs", "commands", "--search", "LIVE-", "--target", "web-1")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "USER", "TARGET", "AS", "COMMAND"]
    assert len(lines) == 2, found.stdout
    assert lines[1].endswith(f"alice@example.com  web-1   {ME}  echo live-$((6*7))")

    exported = zli(org, alice, "logs", "events", "--export", "jsonl")
    assert exported.returncode == 0, exported.stderr
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    kinds = {event["kind"] for event in events}
    assert {"EVENT_KIND_COMMAND", "EVENT_KIND_POLICY_DECISION"} <= kinds
    typed = [e for e in events if e.get("command", {}).get("command") == "echo live-$((6*7))"]
    assert typed[0]["command"]["connection_id"] == recorded.connection_id
    times = [event["time"] for event in events]
    assert times == sorted(times)  # oldest first


def test_a_user_sees_only_their_own_recordings_and_commands(people: People) -> None:
    org, bob = people.org, people.bob
    alices = _recorded_exec(people, org.admin, "alice-$((1+1))", "alice-2")
    bobs = _recorded_exec(people, bob, "bob-$((2+3))", "bob-5")

    mine = recordings(org, bob)
    assert [r["connection_id"] for r in mine] == [bobs]
    assert zli(org, bob, "recording", "verify", bobs).returncode == 0
    for command in ("verify", "play", "watch", "export"):
        hidden = zli(org, bob, "recording", command, alices)
        assert hidden.returncode == 5, (command, hidden.stderr)  # as if it did not exist
        assert "alice-2" not in hidden.stdout

    own = _wait_for_command(org, bob, "echo bob-")
    assert "alice-" not in own
    assert zli(org, bob, "logs", "commands", "--user", "alice@example.com").returncode == 4

    # The administrator sees everyone's.
    every = {r["connection_id"] for r in recordings(org, org.admin)}
    assert {alices, bobs} <= every
    commands = _wait_for_command(org, org.admin, "echo alice-")
    assert "echo bob-$((2+3))" in commands


def _recorded_exec(people: People, home: Path, expression: str, shown: str) -> str:
    """Run `echo EXPRESSION` with `zli exec` as the user of `home`; its complete recording's id."""
    org = people.org
    before = {str(r["connection_id"]) for r in recordings(org, home)}
    done = zli(org, home, "exec", f"{ME}@{people.target_id}", "--", f"echo {expression}")
    # Only the output: the exit status of a quick command is test_zli_connect.py's to check
    # (test_a_quick_command_always_reports_its_exit_status), and it is not what this test is about.
    assert done.stdout == shown + "\n", done.stderr
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        fresh = [
            str(r["connection_id"])
            for r in recordings(org, home)
            if r["connection_id"] not in before and r.get("state") == "RECORDING_STATE_COMPLETE"
        ]
        if fresh:
            return fresh[0]
        assert time.monotonic() < deadline, "the command's recording did not complete"
        time.sleep(0.3)


def _wait_for_command(org: Org, home: Path, text: str) -> str:
    """`zli logs commands --all` as the user of `home`, once it shows `text`."""
    deadline = time.monotonic() + TIMEOUT_S
    while text not in (shown := zli(org, home, "logs", "commands", "--all")).stdout:
        assert time.monotonic() < deadline, shown.stdout + shown.stderr
        time.sleep(0.3)
    return shown.stdout
