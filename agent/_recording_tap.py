"""Wires a session's terminal or pipes to its recording and command log (PROTOCOL.md §8).

When a shell starts under a grant whose `record` settings ask for anything, `Recorder.start_shell`
gives the `PtyShell` a `RecordingTap`. The shell calls the tap from the event loop with what
passes through its terminal, whether or not a client is attached (a detached shell keeps
recording):

- output read from the PTY -> `ShellRecording.output`;
- input before it is typed into the PTY -> `ShellRecording.input`, marked secret when the
  terminal reads a password (`reads_secret` on the PTY master, checked at that moment), so
  password prompts never reach the recording or the command log;
- a resize -> `ShellRecording.resize`;
- a timer at the recorder's `next_deadline()` -> `due`, so a quiet session's last output still
  reaches live viewers within `max_chunk_age_s`;
- the end of the terminal -> `close`, which cuts the final chunk.

A command (`exec`) is recorded the same way by the channel that drives its pipes
(`Recorder.start_exec`): its stdout and stderr as output, its stdin as input when asked, and the
command line itself in the command log.

Every chunk cut goes to the agent's `RecordingUplink`. While the uplink's queue is full, the tap
says it is not `accepting`: the shell stops reading its terminal (and a command's pipes are not
read) until there is room.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.mrzap.v1 import mrzap_pb2
from mrzap.recording import ChainSigner, recording_header

from ._commands import TypedCommand, reads_secret
from ._recorder import RecorderLimits, SessionRecorder, ShellRecording
from ._uplink import RecordingUplink

__all__ = ["Recorder", "RecordingTap", "TappedShell"]

_log = logging.getLogger("mrzap.agent.recordings")


class TappedShell(Protocol):
    """What the tap needs of the shell it records."""

    @property
    def master_fd(self) -> int:
        """The PTY's master side, to ask whether the terminal reads a password."""

    def set_tap(self, tap: RecordingTap) -> None:
        """Start calling the tap with what passes through the terminal."""

    def resume_reading(self) -> None:
        """Read the terminal again if it was paused only for the tap."""


class _Recording(Protocol):
    """What `ShellRecording` and `SessionRecorder` both offer."""

    def output(self, data: bytes, now: float) -> list[bytes]: ...

    def input(self, data: bytes, now: float, *, secret: bool = False) -> list[bytes]: ...

    def resize(self, cols: int, rows: int, now: float) -> list[bytes]: ...

    def next_deadline(self) -> float | None: ...

    def due(self, now: float) -> list[bytes]: ...

    def close(self, now: float) -> list[bytes]: ...


def _never_secret() -> bool:
    return False


class RecordingTap:
    """The recording of one session, fed as it happens; see the module docstring."""

    def __init__(
        self,
        recording: _Recording,
        uplink: RecordingUplink,
        *,
        secret: Callable[[], bool] = _never_secret,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        """`secret` says whether input typed now is a password; `on_room` is called when the
        uplink has room again after the tap stopped accepting."""
        self._recording = recording
        self._uplink = uplink
        self._secret = secret
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self._stop_listening = uplink.on_room(on_room) if on_room else _nothing

    @property
    def accepting(self) -> bool:
        """Whether the session may produce more now."""
        return self._closed or self._uplink.accepting

    @property
    def closed(self) -> bool:
        """Whether the final chunk has been cut."""
        return self._closed

    async def room(self) -> None:
        """Return once the session may produce more."""
        if not self._closed:
            await self._uplink.room()

    def output(self, data: bytes) -> None:
        """The session wrote `data`."""
        if not self._closed:
            self._emit(self._recording.output(data, self._loop.time()))

    def input(self, data: bytes) -> None:
        """`data` is about to be given to the session."""
        if self._closed:
            return
        try:
            secret = self._secret()
        except OSError:
            # The terminal is gone; nothing typed now reaches a program, so nothing is recorded.
            return
        self._emit(self._recording.input(data, self._loop.time(), secret=secret))

    def resize(self, rows: int, cols: int) -> None:
        """The terminal has a new size."""
        if not self._closed:
            self._emit(self._recording.resize(cols, rows, self._loop.time()))

    def close(self) -> None:
        """The session ended: cut the final chunk (once)."""
        if self._closed:
            return
        self._closed = True
        self._stop_listening()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._uplink.put(self._recording.close(self._loop.time()))

    def _emit(self, chunks: list[bytes]) -> None:
        self._uplink.put(chunks)
        self.schedule()

    def schedule(self) -> None:
        """Cut what the recording holds when its time comes (after adding to it directly)."""
        deadline = self._recording.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            # The recorder's times are the loop's clock (monotonic), so its deadline is too.
            self._timer = self._loop.call_at(deadline, self._due)

    def _due(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self._closed:
            self._emit(self._recording.due(self._loop.time()))


def _nothing() -> None:
    pass


class Recorder:
    """Starts the recordings of this agent's sessions, signed with the agent key."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        uplink: RecordingUplink | None = None,
        limits: RecorderLimits | None = None,
    ) -> None:
        self._key = key
        self.uplink = uplink or RecordingUplink()
        """Where every recording's chunks go."""
        self._limits = limits

    def start_shell(
        self,
        shell: TappedShell,
        connection_id: str,
        grant: mrzap_pb2.Grant,
        *,
        rows: int,
        cols: int,
    ) -> RecordingTap | None:
        """Record `shell` (connection `connection_id`) as `grant.record` asks; None if it asks
        for nothing."""
        recorder = self._recorder(connection_id, grant, rows, cols)
        if recorder is None:
            return None

        def secret() -> bool:
            return reads_secret(shell.master_fd)

        tap = RecordingTap(
            ShellRecording(recorder), self.uplink, secret=secret, on_room=shell.resume_reading
        )
        shell.set_tap(tap)
        return tap

    def start_exec(
        self, connection_id: str, grant: mrzap_pb2.Grant, command: str
    ) -> RecordingTap | None:
        """Record a command's pipes as `grant.record` asks, the command line in the command log;
        None if the grant asks for nothing."""
        recorder = self._recorder(connection_id, grant, 24, 80)
        if recorder is None:
            return None
        now = asyncio.get_running_loop().time()
        self.uplink.put(recorder.commands([TypedCommand(0.0, command)], now))
        tap = RecordingTap(recorder, self.uplink)
        tap.schedule()  # the command line reaches live viewers without waiting for output
        return tap

    def _recorder(
        self, connection_id: str, grant: mrzap_pb2.Grant, rows: int, cols: int
    ) -> SessionRecorder | None:
        settings = grant.record
        if not (settings.output or settings.input):
            return None
        header = recording_header(grant, cols, rows, time.time())
        _log.info(
            "recording connection %s (%s)",
            connection_id,
            "output and input" if settings.input else "output",
        )
        return SessionRecorder(
            ChainSigner(self._key, connection_id, header),
            settings,
            asyncio.get_running_loop().time(),
            self._limits,
        )
