"""`zli connect`, `zli exec` and `zli connections attach` as users run them: real IdP, `mrzapd
serve`, a registered `mrzap-agent run`, and zli as a separate process — on a real pseudo-terminal
(pexpect) for the interactive shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect  # type: ignore[import-untyped]  # it ships no type information
import pytest

from .conftest import BIN, zli_terminal
from .targets import ME, online_site
from .test_admin_cli import ok
from .test_agents import Org

#: A user the policy allows but the agent's own configuration does not.
NOT_LOCAL = "daemon" if ME != "daemon" else "nobody"
TIMEOUT_S = 20
POLICY = f"""\
name: alice-shells
kind: target_connect
subjects:
  emails: [alice@example.com, bob@example.com]
targets:
  environments: [e2e-zli-connect]
target_users: [{ME}, {NOT_LOCAL}]
verbs: [shell, exec]
max_session_duration: 1h
"""
DETACHED = r"detached; zli connections attach (\S+) to return"


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Org]:
    """The cluster, alice logged in, a policy for her, web-1 online and web-2 registered only."""
    root = tmp_path_factory.mktemp("zli-connect")
    # bob is not an administrator.
    with online_site(
        root,
        users=("alice", "bob"),
        env="e2e-zli-connect",
        policy=POLICY,
        agents=("web-1", "web-2"),
    ) as site:
        yield site.org


def _env(org: Org, home: Path | None = None) -> dict[str, str]:
    return org.cluster.env(home or org.admin, TERM="xterm")


def zli(
    org: Org, *args: str, stdin: bytes = b"", home: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run zli (as alice, or the user whose zli home is `home`) to the end with `stdin`."""
    return subprocess.run(
        [str(BIN / "zli"), *args],
        input=stdin,
        capture_output=True,
        env=_env(org, home),
        timeout=TIMEOUT_S * 2,
        check=False,
    )


def spawn(org: Org, *args: str) -> pexpect.spawn:
    """zli on a fresh pseudo-terminal."""
    return zli_terminal(list(args), _env(org), TIMEOUT_S)


def finish(child: pexpect.spawn) -> int:
    """zli's exit status, once it has ended."""
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return int(child.exitstatus)


def test_exec_passes_stdin_stdout_stderr_and_the_exit_code(org: Org) -> None:
    done = zli(
        org,
        "exec",
        f"{ME}@web-1",
        "--",
        'read x; echo "out $x"; echo "err $x" >&2; exit 7',
        stdin=b"you\n",
    )
    assert (done.stdout, done.returncode) == (b"out you\n", 7), done.stderr
    assert done.stderr == b"err you\n"


def test_exec_carries_more_than_the_flow_control_window_both_ways(org: Org) -> None:
    data = os.urandom(600 * 1024)  # more than two 256 KiB windows each way
    done = zli(org, "exec", f"{ME}@web-1", "--", "cat", stdin=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data


def test_exec_reads_stdin_from_a_regular_file(org: Org, tmp_path: Path) -> None:
    data = os.urandom(100 * 1024)
    (tmp_path / "input").write_bytes(data)
    with (tmp_path / "input").open("rb") as stdin:
        done = subprocess.run(
            [str(BIN / "zli"), "exec", f"{ME}@web-1", "--", "sha256sum"],
            stdin=stdin,
            capture_output=True,
            env=_env(org),
            timeout=TIMEOUT_S * 2,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_an_interactive_shell_follows_the_terminal_size_and_ends_with_its_status(
    org: Org,
) -> None:
    child = spawn(org, "connect", f"{ME}@web-1")
    child.sendline("echo hel''lo-$((40+2))")
    child.expect("hello-42")
    child.sendline("stty size")
    child.expect(r"24 80")
    child.setwinsize(30, 100)
    child.sendline("stty size")
    child.expect(r"30 100")
    child.sendline("sleep 100")
    child.sendcontrol("c")  # raw mode: Ctrl-C reaches the remote sleep, not zli
    child.sendline("echo after-$((1+2))")
    child.expect("after-3")
    child.sendline("exit 5")
    assert finish(child) == 5


def test_detach_leaves_the_shell_running_and_attach_replays_then_continues(org: Org) -> None:
    child = spawn(org, "connect", f"{ME}@web-1")
    child.sendline("cd /tmp && echo mark-$((6*7))")
    child.expect("mark-42")
    child.send("~?")
    child.expect("detach")
    child.send("~.")
    child.expect(DETACHED)
    connection_id = child.match.group(1).decode()
    assert finish(child) == 0

    again = spawn(org, "connections", "attach", connection_id)  # found in the broker's records
    again.expect("mark-42")  # the replay of what the shell wrote before
    again.sendline("echo again-$((1+1))")
    again.expect("again-2")
    again.send("\r~.")
    again.expect(DETACHED)
    assert again.match.group(1).decode() == connection_id
    assert finish(again) == 0

    last = spawn(org, "connect", "--attach", connection_id, f"{ME}@web-1")
    last.expect("again-2")
    last.sendline("pwd; echo last-$((2+1))")
    last.expect("/tmp")  # the same shell: its working directory stayed
    last.expect("last-3")
    last.sendline("exit 3")
    assert finish(last) == 3


def test_a_target_user_no_policy_allows_is_denied_with_the_policy_reason(org: Org) -> None:
    done = zli(org, "exec", "someone-else@web-1", "--", "true")
    assert done.returncode == 4, done.stderr
    message = done.stderr.decode()
    assert re.search(r"zli: access to someone-else@web-1 denied: \S", message), message


def test_a_user_the_agent_does_not_allow_is_refused_with_its_reason_code(
    org: Org, tmp_path: Path
) -> None:
    marker = tmp_path / "must-not-exist"
    tmp_path.chmod(0o777)  # so only the agent's refusal can keep the marker from appearing
    done = zli(org, "exec", f"{NOT_LOCAL}@web-1", "--", f"touch {marker}")
    assert done.returncode == 4, done.stderr
    assert not marker.exists()
    message = done.stderr.decode()
    assert f"target web-1 refused {NOT_LOCAL}@web-1: ACTION_TARGET_USER_NOT_ALLOWED" in message


def test_an_offline_target_is_reported_as_offline(org: Org) -> None:
    done = zli(org, "exec", f"{ME}@web-2", "--", "true")
    assert done.returncode == 6, done.stderr
    assert done.stderr.decode().strip() == "zli: target web-2 is offline"


def test_an_unknown_target_is_named(org: Org) -> None:
    done = zli(org, "connect", f"{ME}@no-such-target")
    assert done.returncode == 5, done.stderr
    assert "no target named 'no-such-target'" in done.stderr.decode()


def test_sigterm_restores_the_terminal_and_leaves_the_shell_to_attach(org: Org) -> None:
    child = spawn(org, "connect", f"{ME}@web-1")
    child.sendline("echo before-$((5*5))")
    child.expect("before-25")
    child.kill(signal.SIGTERM)
    child.expect(DETACHED)
    connection_id = child.match.group(1).decode()
    assert finish(child) == 128 + signal.SIGTERM

    again = spawn(org, "connections", "attach", connection_id)
    again.expect("before-25")
    again.sendline("exit 0")
    assert finish(again) == 0


def test_closing_the_connection_ends_zli_connect_with_a_clear_message(org: Org) -> None:
    child = spawn(org, "connect", f"{ME}@web-1")
    child.sendline("echo open-$((3*3))")
    child.expect("open-9")
    listed = json.loads(
        ok(org.cluster, org.admin, "connections", "list", "--state", "open", "--json")
    )
    ok(org.cluster, org.admin, "connections", "close", listed[0]["id"])  # newest first: this one
    child.expect("zli: the connection was closed or your access was revoked")
    assert finish(child) == 13


def test_a_quick_command_always_reports_its_exit_status(org: Org) -> None:
    """The process's exit and the end of the call race zli's last writes; none may be lost."""
    for _ in range(10):
        done = zli(org, "exec", f"{ME}@web-1", "--", "exit 4")
        assert done.returncode == 4, done.stderr


def test_a_user_who_is_not_an_administrator_connects_by_target_id_or_name(org: Org) -> None:
    bob = org.admin.parent / "bob"
    shown = json.loads(org.zli("targets", "show", "web-1", "--json"))
    done = zli(org, "exec", f"{ME}@{shown['target']['id']}", "--", "echo hi bob", home=bob)
    assert (done.stdout, done.returncode) == (b"hi bob\n", 0), done.stderr
    # His policy covers web-1's environment, so he finds it by name too.
    by_name = zli(org, "exec", f"{ME}@web-1", "--", "echo by name", home=bob)
    assert (by_name.stdout, by_name.returncode) == (b"by name\n", 0), by_name.stderr


def test_a_closed_output_pipe_ends_the_command_quietly(org: Org) -> None:
    script = f'"$ZLI" exec {ME}@web-1 -- yes | head -n 1; echo "zli: ${{PIPESTATUS[0]}}" >&2'
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        env={**_env(org), "ZLI": str(BIN / "zli")},
        timeout=TIMEOUT_S * 2,
        check=False,
    )
    assert done.stdout == b"y\n"
    assert done.stderr.decode().strip() == f"zli: {128 + signal.SIGPIPE}"  # no traceback


def test_sigterm_ends_zli_exec_with_143(org: Org) -> None:
    zli_exec = subprocess.Popen(
        [str(BIN / "zli"), "exec", f"{ME}@web-1", "--", "echo started; exec sleep 60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(org),
    )
    try:
        assert zli_exec.stdout is not None
        assert zli_exec.stdout.readline() == b"started\n"
        zli_exec.send_signal(signal.SIGTERM)
        _, stderr = zli_exec.communicate(timeout=TIMEOUT_S)
    finally:
        zli_exec.kill()
    assert zli_exec.returncode == 128 + signal.SIGTERM, stderr
    assert b"Traceback" not in stderr
