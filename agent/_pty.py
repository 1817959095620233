"""An interactive shell on a pseudo-terminal, driven from the event loop.

`PtyShell.start` runs the target user's login shell (`shell -l`) as that user, in a new session
whose controlling terminal is the PTY, so job control, `tty` and SIGWINCH work as in
an SSH session. The agent holds the PTY's master side:

- output is read by a reader callback on the event loop (the master is non-blocking; nothing
  blocks the loop) into a ring buffer of recent output and, while a client is attached, into
  that client's `ShellOutput`, whose `read(max_bytes)` hands it out coalesced, so a busy shell
  gives a few large reads rather than many small ones;
- when the attached client does not keep up (its pending bytes pass `high_water`), reading the
  PTY pauses until it catches up, so the shell itself slows down: back-pressure for the channel's
  credit-based flow control (PROTOCOL.md section 6);
- a detached shell keeps running and keeps its recent output in the ring buffer, so `attach()`
  can replay it to the next client (`zli connect` to an existing connection);
- `write_stdin` waits for the PTY to accept input with a writer callback, never blocking;
- a `TerminalTap` (the session's recording, PROTOCOL.md section 8) sees all output, input and
  resizes, attached or not; while it cannot take more, the PTY is not read at all.

The shell's exit status comes from `wait()`; `close()` hangs up the terminal (SIGHUP to the
shell's process group, SIGKILL after a grace period) the way a dropped SSH session does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import os
import shutil
import signal
import struct
import termios
from typing import Protocol

from ._shell_process import ExitStatus, TargetUser

__all__ = [
    "DEFAULT_HIGH_WATER",
    "DEFAULT_REPLAY_BYTES",
    "Detached",
    "PtyShell",
    "ShellOutput",
    "TerminalTap",
]

#: Recent output kept for a client that re-attaches.
DEFAULT_REPLAY_BYTES = 64 * 1024
#: Pending output for the attached client above which the PTY is no longer read.
DEFAULT_HIGH_WATER = 256 * 1024
#: Largest single read from the PTY.
_READ_BYTES = 64 * 1024
#: How long a hung-up shell gets before it is killed.
_HANGUP_GRACE_S = 2.0
#: util-linux's setsid, present on every Linux system.
_SETSID = shutil.which("setsid") or "/usr/bin/setsid"


class TerminalTap(Protocol):
    """Sees what passes through the terminal (the recording, `_recording_tap.RecordingTap`)."""

    @property
    def accepting(self) -> bool:
        """False while the terminal must not be read (the recording's uplink is full)."""

    def output(self, data: bytes) -> None:
        """The shell wrote `data`."""

    def input(self, data: bytes) -> None:
        """`data` is about to be typed."""

    def resize(self, rows: int, cols: int) -> None:
        """The terminal got a new size."""

    def close(self) -> None:
        """The terminal ended."""


class Detached(Exception):
    """The reader was detached: another client attached to the shell, or it was detached."""


def _window_size(rows: int, cols: int) -> bytes:
    return struct.pack("HHHH", max(rows, 1), max(cols, 1), 0, 0)


class ShellOutput:
    """One attached client's view of the shell's output: the replay, then what follows."""

    def __init__(self, shell: PtyShell, replay: bytes) -> None:
        self._shell = shell
        self.replay = replay
        """The recent output the shell had when this client attached."""
        self.pending = bytearray()
        """Output that arrived since attaching and is not read yet (bounded by `high_water`)."""
        self.ready = asyncio.Event()
        self.detached = False

    async def read(self, max_bytes: int = _READ_BYTES) -> bytes:
        """Up to `max_bytes` of new output as soon as there is some; b"" once the terminal closed.

        Raises Detached once another client attached or this one was detached.
        """
        return await self._shell._read(self, max_bytes)


class PtyShell:
    """A login shell running on a PTY; see the module docstring."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        master: int,
        user: TargetUser,
        *,
        replay_bytes: int,
        high_water: int,
    ) -> None:
        self._process = process
        self._master = master
        self.user = user
        """The account the shell runs as."""
        self._loop = asyncio.get_running_loop()
        self._replay = bytearray()
        self._replay_bytes = replay_bytes
        self._high_water = high_water
        self._reader: ShellOutput | None = None
        self._reading = False
        self._eof = False
        self._closed = False
        self._status: ExitStatus | None = None
        # One write at a time: a second writer's callback would replace the first's.
        self._write_lock = asyncio.Lock()
        self._tap: TerminalTap | None = None
        self._waiter = asyncio.ensure_future(self._wait_process())
        self._resume_reading()

    @classmethod
    async def start(
        cls,
        user: TargetUser,
        *,
        term: str = "xterm-256color",
        rows: int = 24,
        cols: int = 80,
        replay_bytes: int = DEFAULT_REPLAY_BYTES,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> PtyShell:
        """Start `user`'s login shell on a new PTY of `rows` x `cols`."""
        if not os.access(user.shell, os.X_OK):
            # setsid(1) would start and then fail to run it; say so before anything starts.
            raise FileNotFoundError(errno.ENOENT, "the login shell cannot be run", user.shell)
        master, slave = os.openpty()
        try:
            os.set_blocking(master, False)
            fcntl.ioctl(master, termios.TIOCSWINSZ, _window_size(rows, cols))
            if os.geteuid() == 0:
                # As login(1) does: the terminal is the user's; group tty may write to it.
                os.fchown(slave, user.uid, _tty_gid(user.gid))
                os.fchmod(slave, 0o620)
            # setsid(1) makes the shell a session leader with the PTY as its controlling
            # terminal, then execs it under the same pid. Doing that in a preexec_fn would run
            # Python in the forked child, which crashes next to gRPC's threads (the agent's
            # control stream); `-l` makes it a login shell as `-bash` in argv[0] would.
            process = await asyncio.create_subprocess_exec(
                _SETSID,
                "--ctty",
                user.shell,
                "-l",
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=user.working_directory(),
                env=user.environment(term or "xterm-256color"),
                **user.spawn_options(),
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            # Only the child may hold the slave side, or reading the master never sees the end.
            os.close(slave)
        return cls(process, master, user, replay_bytes=replay_bytes, high_water=high_water)

    @property
    def pid(self) -> int:
        """The shell's process id."""
        return self._process.pid

    @property
    def master_fd(self) -> int:
        """The PTY's master side (for `_commands.reads_secret`)."""
        return self._master

    def set_tap(self, tap: TerminalTap) -> None:
        """Show `tap` everything that passes through the terminal from now on, attached or not."""
        self._tap = tap

    def resume_reading(self) -> None:
        """Read the terminal again if it was paused only for the tap and the reader has room."""
        if self._reader is None or len(self._reader.pending) < self._high_water:
            self._resume_reading()

    @property
    def attached(self) -> bool:
        """Whether a client reads the shell's output now."""
        return self._reader is not None

    @property
    def exit_status(self) -> ExitStatus | None:
        """How the shell ended, or None while it runs."""
        return self._status

    # --- output ----------------------------------------------------------------------------------

    def attach(self) -> ShellOutput:
        """Make the caller the shell's only reader, with the recent output as its replay.

        A previous reader's `read` raises Detached.
        """
        self.detach()
        self._reader = ShellOutput(self, bytes(self._replay))
        if self._eof:
            self._reader.ready.set()
        self._resume_reading()
        return self._reader

    def detach(self) -> None:
        """Stop delivering output to the attached reader; the shell keeps running."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.detached = True
            reader.ready.set()
        # Nobody is waiting for output: keep draining into the ring so the shell never stalls.
        self._resume_reading()

    async def _read(self, reader: ShellOutput, max_bytes: int) -> bytes:
        while not reader.pending and not self._eof and not reader.detached:
            reader.ready.clear()
            await reader.ready.wait()
        if reader.detached:
            raise Detached("this client was detached from the shell")
        data = bytes(reader.pending[:max_bytes])
        del reader.pending[:max_bytes]
        if len(reader.pending) < self._high_water:
            self._resume_reading()
        return data

    def _resume_reading(self) -> None:
        if self._tap is not None and not self._tap.accepting:
            return  # the tap's room listener resumes once the recording can take more
        if not self._reading and not self._eof and not self._closed:
            self._loop.add_reader(self._master, self._on_readable)
            self._reading = True

    def _pause_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._master)
            self._reading = False

    def _on_readable(self) -> None:
        if self._tap is not None and not self._tap.accepting:
            # The recording cannot take more now: leave the output in the PTY (the shell blocks
            # once it fills) until the tap's room listener resumes reading.
            self._pause_reading()
            return
        try:
            data = os.read(self._master, _READ_BYTES)
        except BlockingIOError:
            return
        except OSError as error:
            # Linux reports EIO once every process has closed the slave side: the end.
            if error.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._eof = True
            self._pause_reading()
            if self._reader is not None:
                self._reader.ready.set()
            if self._tap is not None:
                self._tap.close()
            return
        tap = self._tap
        if tap is not None:
            tap.output(data)
            if not tap.accepting:
                self._pause_reading()
        self._replay += data
        if len(self._replay) > self._replay_bytes:
            del self._replay[: len(self._replay) - self._replay_bytes]
        reader = self._reader
        if reader is not None:
            reader.pending += data
            reader.ready.set()
            if len(reader.pending) >= self._high_water:
                self._pause_reading()

    # --- input and control -----------------------------------------------------------------------

    async def write_stdin(self, data: bytes) -> None:
        """Type `data` into the terminal, waiting (without blocking) while the PTY is full."""
        async with self._write_lock:
            if self._tap is not None and not self._closed:
                # Seen before it is written: whether the terminal reads a password is decided
                # by its mode now, while the program waits for this input.
                self._tap.input(data)
            await self._write_all(memoryview(data))

    async def _write_all(self, view: memoryview) -> None:
        while view:
            if self._closed:
                raise BrokenPipeError("the shell's terminal is closed")
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                await self._writable()
                continue
            view = view[written:]

    async def _writable(self) -> None:
        ready = self._loop.create_future()

        def on_writable() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(self._master, on_writable)
        try:
            await ready
        finally:
            self._loop.remove_writer(self._master)

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal size; the kernel sends SIGWINCH to the shell's foreground job."""
        if not self._closed:
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, _window_size(rows, cols))
            if self._tap is not None:
                self._tap.resize(rows, cols)

    async def wait(self) -> ExitStatus:
        """Wait for the shell to exit; its status."""
        return await asyncio.shield(self._waiter)

    async def _wait_process(self) -> ExitStatus:
        self._status = ExitStatus.from_returncode(await self._process.wait())
        return self._status

    async def close(self) -> ExitStatus:
        """Hang up: SIGHUP to the shell's session, SIGKILL after a grace period; free the PTY."""
        if self._status is None:
            _signal_group(self._process.pid, signal.SIGHUP)
            # An interactive bash ignores SIGTERM but not SIGHUP; a shell that ignores both dies.
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), _HANGUP_GRACE_S)
            except TimeoutError:
                _signal_group(self._process.pid, signal.SIGKILL)
        status = await self.wait()
        if not self._closed:
            self._pause_reading()
            self._closed = True
            self._eof = True
            os.close(self._master)
            if self._reader is not None:
                self._reader.ready.set()
            if self._tap is not None:
                self._tap.close()
        return status


def _signal_group(pid: int, signum: signal.Signals) -> None:
    # The shell leads its own session and process group (start_new_session), so this reaches its
    # jobs too, but nothing of the agent's.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _tty_gid(default: int) -> int:
    try:
        return grp.getgrnam("tty").gr_gid
    except KeyError:
        return default
