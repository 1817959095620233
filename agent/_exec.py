"""A non-interactive command (`zli exec TARGET -- CMD`): stdin, stdout, stderr and the exit code.

The command runs through the target user's shell with `-c`, as that user (see _shell_process),
with pipes rather than a terminal, so stdout and stderr stay apart and binary data passes
unchanged. Output is read through asyncio's pipe transports (reader callbacks on the loop);
`read_stdout`/`read_stderr` return whatever is buffered up to `max_bytes`, so a chatty command
gives few large reads. A consumer that stops reading makes the pipe fill and the command block:
the back-pressure the channel's flow control relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from ._shell_process import ExitStatus, TargetUser

__all__ = ["ExecProcess"]

_READ_BYTES = 64 * 1024
#: How long a command gets after SIGTERM before SIGKILL.
_TERMINATE_GRACE_S = 2.0


class ExecProcess:
    """One running command; see the module docstring."""

    def __init__(self, process: asyncio.subprocess.Process, user: TargetUser) -> None:
        self._process = process
        self.user = user
        """The account the command runs as."""
        self._waiter = asyncio.ensure_future(process.wait())

    @classmethod
    async def start(cls, user: TargetUser, command: str) -> ExecProcess:
        """Run `command` with `user`'s shell (`shell -c command`) as `user`."""
        process = await asyncio.create_subprocess_exec(
            user.shell,
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=user.working_directory(),
            env=user.environment(),
            # Its own process group, so closing the channel ends the command's children too.
            start_new_session=True,
            limit=_READ_BYTES,
            **user.spawn_options(),
        )
        return cls(process, user)

    @property
    def pid(self) -> int:
        """The shell's process id."""
        return self._process.pid

    async def write_stdin(self, data: bytes) -> None:
        """Feed `data` to the command's stdin, waiting while the pipe is full."""
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(data)
        await stdin.drain()

    async def end_input(self) -> None:
        """Close the command's stdin: it reads end of file."""
        stdin = self._process.stdin
        assert stdin is not None
        if not stdin.is_closing():
            stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await stdin.wait_closed()

    async def read_stdout(self, max_bytes: int = _READ_BYTES) -> bytes:
        """Up to `max_bytes` of stdout as soon as there is some; b"" at its end."""
        assert self._process.stdout is not None
        return await self._process.stdout.read(max_bytes)

    async def read_stderr(self, max_bytes: int = _READ_BYTES) -> bytes:
        """Up to `max_bytes` of stderr as soon as there is some; b"" at its end."""
        assert self._process.stderr is not None
        return await self._process.stderr.read(max_bytes)

    async def wait(self) -> ExitStatus:
        """Wait for the command to exit; its status."""
        return ExitStatus.from_returncode(await asyncio.shield(self._waiter))

    async def close(self) -> ExitStatus:
        """End the command (SIGTERM to its group, SIGKILL after a grace period) and wait."""
        # Output nobody will read is drained meanwhile: asyncio reports the exit only once the
        # pipes are closed, and a full pipe nobody reads would never close.
        draining = asyncio.ensure_future(self._discard_output())
        if self._process.returncode is None:
            _signal_group(self._process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), _TERMINATE_GRACE_S)
            except TimeoutError:
                _signal_group(self._process.pid, signal.SIGKILL)
        await draining
        status = await self.wait()
        stdin = self._process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        return status

    async def _discard_output(self) -> None:
        """Read what nobody will read to its end, so the pipes close (the command is gone)."""
        for stream in (self._process.stdout, self._process.stderr):
            if stream is None:
                continue
            # A reader still draining it (RuntimeError) reaches the end itself; a grandchild that
            # escaped the process group may hold the pipe open, hence the bound.
            with contextlib.suppress(RuntimeError, TimeoutError):
                async with asyncio.timeout(_TERMINATE_GRACE_S):
                    while await stream.read(_READ_BYTES):
                        pass


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
