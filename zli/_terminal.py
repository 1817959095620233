"""The local terminal and standard streams of `zli connect` and `zli exec`, without blocking.

- `raw_mode` puts a terminal in raw mode (every key goes to the remote shell, Ctrl-C included)
  and restores it on every way out;
- `FdReader` reads what is available on a descriptor through the event loop's reader callbacks,
  so one read takes everything typed or piped since the last one (one frame, not one per byte);
- `FdWriter` writes through the loop with the descriptor non-blocking (restored afterwards), so a
  slow terminal or pipe holds back only the output, and the agent's credit with it;
- `window_size` reads a terminal's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
import tty
from collections.abc import Iterator

__all__ = ["FdReader", "FdWriter", "raw_mode", "window_size"]

_DEFAULT_SIZE = (24, 80)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[bool]:
    """Raw mode on `fd` while inside, if it is a terminal; yields whether it is one."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSADRAIN)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def window_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on `fd`; 24x80 when it is not a terminal."""
    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return _DEFAULT_SIZE
    rows, cols, _, _ = struct.unpack("HHHH", packed)
    return (rows or _DEFAULT_SIZE[0], cols or _DEFAULT_SIZE[1])


class FdReader:
    """Reads a descriptor when it is readable, without blocking the event loop.

    The descriptor stays registered with the loop between reads: a shell's input is one read per
    keystroke, and registering and unregistering it each time costs two epoll_ctl calls and the
    selector's bookkeeping. The reader callback reads, so no stale readiness of data already
    read can come after it; the descriptor is unregistered only when it becomes readable while
    nobody reads (a level-triggered poll would wake the loop again and again), and by `close`.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._waiting: asyncio.Future[bytes] | None = None
        self._limit = 0
        self._watching = False

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes, as many as are available; b"" at end of file."""
        if not self._watching:
            try:
                self._loop.add_reader(self._fd, self._on_readable)
            except PermissionError:
                # A regular file cannot be polled, and reading it never waits for anyone.
                return os.read(self._fd, limit)
            self._watching = True
        self._limit = limit
        self._waiting = self._loop.create_future()
        try:
            return await self._waiting
        finally:
            self._waiting = None

    def close(self) -> None:
        """Stop watching the descriptor."""
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def _on_readable(self) -> None:
        waiting = self._waiting
        if waiting is None or waiting.done():
            self.close()  # nobody reads now: the next read watches again
            return
        try:
            data = os.read(self._fd, self._limit)
        except BlockingIOError:
            return  # someone else (a shared terminal) took it first
        except OSError as error:
            waiting.set_exception(error)
            return
        waiting.set_result(data)


class FdWriter:
    """Writes all of each buffer to a descriptor, waiting through the loop when it is full."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._was_blocking = os.get_blocking(fd)
        os.set_blocking(fd, False)

    def restore(self) -> None:
        """Give the descriptor back in the mode it was found in (the shell after zli needs it)."""
        with contextlib.suppress(OSError):
            os.set_blocking(self._fd, self._was_blocking)

    async def write(self, data: bytes) -> None:
        """Write all of `data`."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                written = 0
            view = view[written:]
            if view:
                waiting: asyncio.Future[None] = self._loop.create_future()
                self._loop.add_writer(self._fd, _wake, waiting)
                try:
                    await waiting
                finally:
                    self._loop.remove_writer(self._fd)


def _wake(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)
