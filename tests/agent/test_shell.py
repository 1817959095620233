"""Shells on a PTY and commands, run as real Unix users created for the test.

Switching users needs root: as root (as in CI) the tests create throwaway accounts with
`useradd` and remove them afterwards; otherwise they are skipped with that reason. Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import grp
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest

from agent._exec import ExecProcess
from agent._pty import DEFAULT_HIGH_WATER, DEFAULT_REPLAY_BYTES, Detached, PtyShell, ShellOutput
from agent._sessions import Sessions
from agent._shell_process import ExitStatus, TargetUser
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.handshake import VerifiedSyn
from mrzap.pktoken import VerifiedIdentity
from mrzap.timestamps import to_timestamp
from mrzap.verification import Reason, VerificationError

WAIT_S = 10.0

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to other Unix users needs root (CI runs as root)"
)


class Accounts:
    """Throwaway users: the first is also in a supplementary group; `broken` has no usable shell."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.group = f"mztg{suffix}"
        self.first = f"mzta{suffix}"
        self.second = f"mztb{suffix}"
        self.broken = f"mztc{suffix}"

    def create(self) -> None:
        subprocess.run(["groupadd", self.group], check=True)
        for name, extra in ((self.first, ["-G", self.group]), (self.second, [])):
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", *extra, name], check=True)
        subprocess.run(["useradd", "-s", "/nonexistent/shell", self.broken], check=True)

    def remove(self) -> None:
        for name in (self.first, self.second, self.broken):
            subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
        subprocess.run(["groupdel", self.group], check=False, capture_output=True)


@pytest.fixture(scope="module")
def accounts() -> Iterator[Accounts]:
    made = Accounts()
    try:
        made.create()
        yield made
    finally:
        made.remove()


async def read_until(output: ShellOutput, pattern: bytes) -> bytes:
    """Read the shell's output until `pattern` (a regex) appears; fail after WAIT_S."""
    seen = b""

    async def collect() -> bytes:
        nonlocal seen
        while not re.search(pattern, seen):
            chunk = await output.read()
            if not chunk:
                raise AssertionError(f"terminal closed before {pattern!r}; got {seen!r}")
            seen += chunk
        return seen

    try:
        return await asyncio.wait_for(collect(), WAIT_S)
    except TimeoutError:
        raise AssertionError(f"no {pattern!r} within {WAIT_S}s; got {seen[-500:]!r}") from None


async def run_in(shell: PtyShell, output: ShellOutput, command: str) -> str:
    """Type `command`, return what it printed between two markers (the echo of input excluded)."""
    await shell.write_stdin(f"echo BEGIN-$((6*7)); {command}; echo END-$((6*7))\n".encode())
    seen = await read_until(output, rb"END-42")
    return seen.split(b"BEGIN-42", 1)[1].split(b"END-42", 1)[0].decode().strip()


async def drain(output: ShellOutput) -> bytes:
    """Everything until the terminal closes."""
    data = b""
    while chunk := await asyncio.wait_for(output.read(), WAIT_S):
        data += chunk
    return data


async def start_shell(
    name: str,
    *,
    term: str = "xterm",
    rows: int = 24,
    cols: int = 80,
    replay_bytes: int = DEFAULT_REPLAY_BYTES,
    high_water: int = DEFAULT_HIGH_WATER,
) -> tuple[PtyShell, ShellOutput]:
    """`name`'s login shell, and the test's attachment to its output."""
    shell = await PtyShell.start(
        TargetUser.lookup(name),
        term=term,
        rows=rows,
        cols=cols,
        replay_bytes=replay_bytes,
        high_water=high_water,
    )
    return shell, shell.attach()


@pytest.mark.asyncio
async def test_shell_runs_as_the_user_with_a_login_environment(accounts: Accounts) -> None:
    shell, out = await start_shell(accounts.first, term="vt100")
    try:
        uid = await run_in(shell, out, "id -u")
        groups = await run_in(shell, out, "id -Gn")
        env = await run_in(shell, out, 'echo "$HOME|$SHELL|$USER|$LOGNAME|$TERM|$PWD"')
        login = await run_in(shell, out, "shopt -q login_shell && echo login || echo not-login")
        tty = await run_in(shell, out, 'tty; stat -c %u "$(tty)"; ps -o stat= -p $$')
    finally:
        await shell.close()
    assert int(uid) == TargetUser.lookup(accounts.first).uid
    assert accounts.group in groups.split()  # initgroups: the supplementary group too
    home = f"/home/{accounts.first}"
    assert env == f"{home}|/bin/bash|{accounts.first}|{accounts.first}|vt100|{home}"
    assert login == "login"
    device, owner, state = tty.split()
    assert device.startswith("/dev/pts/")
    assert int(owner) == TargetUser.lookup(accounts.first).uid  # the terminal is the user's
    assert "s" in state  # the shell leads its own session, with the PTY as its terminal


@pytest.mark.asyncio
async def test_agent_environment_does_not_leak_into_the_shell(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRZAP_AGENT_SECRET", "do-not-leak")
    shell, out = await start_shell(accounts.first)
    try:
        assert await run_in(shell, out, 'echo "[$MRZAP_AGENT_SECRET]"') == "[]"
    finally:
        await shell.close()


@pytest.mark.asyncio
async def test_resize_reaches_the_terminal(accounts: Accounts) -> None:
    shell, out = await start_shell(accounts.first, rows=30, cols=100)
    try:
        assert await run_in(shell, out, "stty size") == "30 100"
        shell.resize(50, 132)
        assert await run_in(shell, out, "stty size") == "50 132"
    finally:
        await shell.close()


@pytest.mark.asyncio
async def test_exit_status_of_the_shell(accounts: Accounts) -> None:
    shell, out = await start_shell(accounts.first)
    try:
        await shell.write_stdin(b"exit 7\n")
        assert await asyncio.wait_for(shell.wait(), WAIT_S) == ExitStatus(7)
        # The rest of the output drains, then the end of the terminal shows.
        await drain(out)
    finally:
        await shell.close()


@pytest.mark.asyncio
async def test_close_hangs_up_the_shell(accounts: Accounts) -> None:
    shell, out = await start_shell(accounts.first)
    await run_in(shell, out, "true")
    status = await asyncio.wait_for(shell.close(), WAIT_S)
    # SIGHUP did it (the shell died of it, or exited on it), not the SIGKILL fallback.
    assert status.signal in (signal.SIGHUP, 0)
    assert status != ExitStatus(0)
    await drain(out)  # output still pending drains, then the end shows


@pytest.mark.asyncio
async def test_several_shells_of_several_users_at_once(accounts: Accounts) -> None:
    terms = [await start_shell(n) for n in (accounts.first, accounts.second, accounts.first)]
    try:
        names = await asyncio.gather(*(run_in(s, o, "id -un") for s, o in terms))
        assert names == [accounts.first, accounts.second, accounts.first]
        assert len({s.pid for s, _ in terms}) == 3
    finally:
        await asyncio.gather(*(s.close() for s, _ in terms))


@pytest.mark.asyncio
async def test_reattach_replays_recent_output_then_continues(accounts: Accounts) -> None:
    shell, out = await start_shell(accounts.first, replay_bytes=4096)
    try:
        await run_in(shell, out, "echo before-detach")
        shell.detach()
        # Output while nobody is attached goes to the ring buffer only, trimmed to its size.
        await shell.write_stdin(
            b"head -c 10000 /dev/zero | tr '\\0' x; echo; echo while-$((1+1))\n"
        )
        await asyncio.sleep(0.5)
        out = shell.attach()
        replay = out.replay
        if b"while-2" not in replay:
            replay += await read_until(out, rb"while-2")
        assert len(out.replay) <= 4096
        assert b"while-2" in replay
        assert await run_in(shell, out, "echo after-$((2+2))") == "after-4"
    finally:
        await shell.close()


@pytest.mark.asyncio
async def test_a_new_client_detaches_the_previous_one(accounts: Accounts) -> None:
    shell, first = await start_shell(accounts.first)
    try:
        second = shell.attach()
        with pytest.raises(Detached):
            await asyncio.wait_for(first.read(), WAIT_S)
        assert await run_in(shell, second, "echo still-$((1+2))") == "still-3"
        shell.detach()
        with pytest.raises(Detached):
            await asyncio.wait_for(second.read(), WAIT_S)
    finally:
        await shell.close()


@pytest.mark.asyncio
async def test_slow_reader_pauses_the_shell(accounts: Accounts) -> None:
    shell, out = await start_shell(accounts.first, high_water=32 * 1024)
    try:
        await shell.write_stdin(
            b"head -c 3000000 /dev/zero | tr '\\0' y; echo; echo DONE-$((3*3))\n"
        )
        await asyncio.sleep(1.0)
        # Nobody read: the PTY stops being drained once the client's backlog passes the mark.
        assert len(out.pending) < 32 * 1024 + 64 * 1024
        seen = await read_until(out, rb"DONE-9")
        assert seen.count(b"y") >= 3_000_000
    finally:
        await shell.close()


# --- exec ---------------------------------------------------------------------------------------


async def drain_pipe(read: Callable[[], Awaitable[bytes]]) -> bytes:
    data = b""
    while chunk := await asyncio.wait_for(read(), WAIT_S):
        data += chunk
    return data


@pytest.mark.asyncio
async def test_exec_passes_stdin_stdout_stderr_and_exit_code(accounts: Accounts) -> None:
    process = await ExecProcess.start(
        TargetUser.lookup(accounts.first), "id -un; cat; echo oops >&2; exit 3"
    )
    await process.write_stdin(b"\x00binary\xffdata")
    await process.end_input()
    stdout, stderr = await asyncio.gather(
        drain_pipe(process.read_stdout), drain_pipe(process.read_stderr)
    )
    assert stdout == f"{accounts.first}\n".encode() + b"\x00binary\xffdata"
    assert stderr == b"oops\n"
    assert await asyncio.wait_for(process.wait(), WAIT_S) == ExitStatus(3)


@pytest.mark.asyncio
async def test_exec_close_ends_the_command_and_its_children(accounts: Accounts) -> None:
    process = await ExecProcess.start(TargetUser.lookup(accounts.first), "sleep 60 & sleep 60")
    status = await asyncio.wait_for(process.close(), WAIT_S)
    assert status.signal == signal.SIGTERM
    assert status.code == 128 + signal.SIGTERM


@pytest.mark.asyncio
async def test_exec_close_ends_a_command_whose_output_nobody_reads(accounts: Accounts) -> None:
    # The client left mid-output: the pipe is full and asyncio reports the exit only once the
    # pipes are closed, so close() must drain them or wait forever.
    process = await ExecProcess.start(TargetUser.lookup(accounts.first), "yes")
    assert await asyncio.wait_for(process.read_stdout(), WAIT_S)
    await asyncio.sleep(0.2)  # the pipe and the reader's buffer fill up
    status = await asyncio.wait_for(process.close(), WAIT_S)
    assert status.signal == signal.SIGTERM


@pytest.mark.asyncio
async def test_user_whose_shell_cannot_start_is_refused(accounts: Accounts) -> None:
    sessions = Sessions()
    with pytest.raises(VerificationError) as caught:
        await sessions.start(
            verified("shell_open", mrzap_pb2.ShellOpen(target_user=accounts.broken))
        )
    assert caught.value.reason is Reason.ACTION_TARGET_USER_NOT_ALLOWED
    assert len(sessions) == 0


def test_unknown_user_is_refused() -> None:
    with pytest.raises(VerificationError) as caught:
        TargetUser.lookup("no-such-user-mrzap")
    assert caught.value.reason is Reason.ACTION_TARGET_USER_NOT_ALLOWED


# --- the connection table -----------------------------------------------------------------------


def verified(
    action: str, message: object, *, sub: str = "alice-sub", expires: float = 0
) -> VerifiedSyn:
    # Each SYN a channel of its own: a new connection's id is its channel id.
    syn = mrzap_pb2.Syn(version=1, channel_id=str(uuid.uuid4()), target_id="t")
    getattr(syn, action).CopyFrom(message)
    grant = mrzap_pb2.Grant(
        grant_id=str(uuid.uuid4()),
        subject=mrzap_pb2.Subject(iss="https://idp", sub=sub),
        target_user=getattr(message, "target_user", ""),
        session_expires_at=to_timestamp(expires or time.time() + 3600),
    )
    identity = VerifiedIdentity(
        iss="https://idp",
        sub=sub,
        email="",
        email_verified=False,
        groups=(),
        upk=b"",
        session_started_at=0.0,
        expires_at=0.0,
        claims={},
    )
    return VerifiedSyn(signed_syn=b"", syn=syn, grant=grant, identity=identity)


@pytest.mark.asyncio
async def test_sessions_reattach_only_for_the_same_user(accounts: Accounts) -> None:
    sessions = Sessions()
    try:
        opened = await sessions.start(
            verified("shell_open", mrzap_pb2.ShellOpen(target_user=accounts.first))
        )
        shell, out = opened.session, opened.output
        assert isinstance(shell, PtyShell)
        assert out is not None
        await run_in(shell, out, "echo remembered")
        connection_id = opened.result.connection_id
        attach = mrzap_pb2.ShellAttach(target_user=accounts.first, connection_id=connection_id)

        for refused in (
            verified("shell_attach", attach, sub="mallory-sub"),  # another IdP user
            verified(  # the same user asking for another account's shell
                "shell_attach",
                mrzap_pb2.ShellAttach(target_user=accounts.second, connection_id=connection_id),
            ),
            verified(  # an unknown connection
                "shell_attach",
                mrzap_pb2.ShellAttach(target_user=accounts.first, connection_id="nope"),
            ),
        ):
            with pytest.raises(VerificationError) as caught:
                await sessions.start(refused)
            assert caught.value.reason is Reason.ACTION_TARGET_USER_NOT_GRANTED

        again = await sessions.start(verified("shell_attach", attach))
        assert again.result.connection_id == connection_id
        assert again.result.pid == shell.pid
        assert b"remembered" in again.result.replay
    finally:
        await sessions.close_all()
    assert len(sessions) == 0


@pytest.mark.asyncio
async def test_sessions_end_connections_whose_grant_is_no_longer_valid(accounts: Accounts) -> None:
    sessions = Sessions()
    try:
        keep = await sessions.start(
            verified("shell_open", mrzap_pb2.ShellOpen(target_user=accounts.first))
        )
        short = verified(
            "exec",
            mrzap_pb2.Exec(target_user=accounts.second, command="sleep 60"),
            expires=time.time() + 1,
        )
        expire = await sessions.start(short)
        assert sessions.next_expiry() == short.session_expires_at
        now = time.time() + 2
        ended = await asyncio.wait_for(
            sessions.end_invalid(lambda v: now < v.session_expires_at), WAIT_S
        )
        assert ended == [expire.result.connection_id]
        assert (await expire.session.wait()).signal == signal.SIGTERM
        assert sessions.get(keep.result.connection_id) is not None
    finally:
        await sessions.close_all()


@pytest.mark.asyncio
async def test_a_new_connection_is_named_by_its_channel_and_never_takes_a_running_id(
    accounts: Accounts,
) -> None:
    sessions = Sessions()
    try:
        first = verified("exec", mrzap_pb2.Exec(target_user=accounts.first, command="sleep 60"))
        started = await sessions.start(first)
        assert started.result.connection_id == first.syn.channel_id
        again = verified("exec", mrzap_pb2.Exec(target_user=accounts.first, command="sleep 60"))
        again.syn.channel_id = first.syn.channel_id
        with pytest.raises(VerificationError) as refused:
            await sessions.start(again)
        assert refused.value.reason is Reason.MALFORMED
        assert len(sessions) == 1
    finally:
        await sessions.close_all()


@pytest.mark.asyncio
async def test_finished_exec_leaves_the_table(accounts: Accounts) -> None:
    sessions = Sessions()
    started = await sessions.start(
        verified("exec", mrzap_pb2.Exec(target_user=accounts.first, command="exit 0"))
    )
    assert isinstance(started.session, ExecProcess)
    await started.session.end_input()
    assert await asyncio.wait_for(started.session.wait(), WAIT_S) == ExitStatus(0)
    await asyncio.sleep(0)
    assert sessions.get(started.result.connection_id) is None


def test_accounts_group_exists(accounts: Accounts) -> None:
    assert grp.getgrnam(accounts.group).gr_mem == [accounts.first]
