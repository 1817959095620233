"""Records a terminal session as signed, hash-chained chunks (PROTOCOL.md section 8).

`SessionRecorder` turns what happens on a session's terminal (output, input when the grant's
record settings ask for it, resizes, the commands the command log extracted) into asciicast v2
events, and cuts them into chunks signed by `mrzap.recording.ChainSigner`: a chunk is cut when its
events reach `max_chunk_bytes`, when its oldest event is `max_chunk_age_s` old, and at the end.

Memory stays bounded: at most one unsigned chunk is held, a large read becomes several events, and
each call returns the chunks it cut, which the caller must send (or queue with a bound) before it
reads more from the terminal, so a slow uplink slows the session instead of filling memory.

`ShellRecording` is what a shell session drives: it feeds the same bytes to the recorder and to the
command log (`_commands`), which it keeps quiet while a full-screen program runs.

Times are seconds on a monotonic clock, given by the caller so tests can move them; the recorder
turns them into seconds since the session started, and never lets them go back.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Iterable

from bastion.mrzap.v1 import mrzap_pb2
from mrzap.errors import InvalidArgument
from mrzap.recording import ChainSigner

from ._commands import AlternateScreenTracker, CommandExtractor, TypedCommand

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "RecorderLimits",
    "SessionRecorder",
    "ShellRecording",
]

#: Events' data per chunk by default. Each chunk costs a signature here and a verification, a
#: compression and a database write at the broker, so bulk output (`cat` of a large file) goes
#: faster with larger chunks: measured 6.5 MB/s at 64 KiB, 8.7 MB/s at 160 KiB.
DEFAULT_CHUNK_BYTES = 160 * 1024
#: The most `max_chunk_bytes` may be: a signed chunk is its events' data plus a few hundred bytes
#: (the header, the envelope, the signature), and it must fit well inside the broker's limit on a
#: control-stream message (BrokerConfig.max_message_bytes, 256 KiB by default).
MAX_CHUNK_BYTES = 192 * 1024

_EVENT_OVERHEAD = 24
"""Roughly what the protobuf framing of one event adds to its data, in bytes."""


@dataclasses.dataclass(frozen=True)
class RecorderLimits:
    """When the recorder cuts a chunk."""

    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    """A chunk is cut before its events' data would exceed this many bytes."""

    max_chunk_age_s: float = 1.0
    """A chunk is cut once its oldest event is this old, so live viewers lag at most this."""

    def __post_init__(self) -> None:
        if not 1024 <= self.max_chunk_bytes <= MAX_CHUNK_BYTES:
            raise InvalidArgument(
                f"max_chunk_bytes must be at least 1024 and at most {MAX_CHUNK_BYTES}"
            )
        if not 0 < self.max_chunk_age_s <= 60:
            raise InvalidArgument("max_chunk_age_s must be more than 0 and at most 60")

    @property
    def max_read_bytes(self) -> int:
        """The largest slice of a read that becomes one event.

        Decoding replaces each invalid byte with U+FFFD (3 bytes), so a slice of a quarter of a
        chunk always fits in one.
        """
        return self.max_chunk_bytes // 4


class SessionRecorder:
    """The recording of one terminal session, cut into signed chunks as it happens."""

    def __init__(
        self,
        signer: ChainSigner,
        settings: mrzap_pb2.RecordSettings,
        started: float,
        limits: RecorderLimits | None = None,
    ) -> None:
        """Record with `signer` (its header names the session) what `settings` ask for.

        `started` is the monotonic time the session started; event times count from it.
        """
        self._signer = signer
        self._settings = settings
        self._started = started
        self._limits = limits or RecorderLimits()
        self._output_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._input_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._events: list[mrzap_pb2.RecordingEvent] = []
        self._commands: list[mrzap_pb2.CommandRecord] = []
        self._pending_bytes = 0
        self._oldest: float | None = None
        self._last_time = 0.0

    @property
    def pending_bytes(self) -> int:
        """Roughly how many bytes of events wait for the next chunk."""
        return self._pending_bytes

    def elapsed(self, now: float) -> float:
        """Seconds since the session started at monotonic time `now`, never going back."""
        self._last_time = max(self._last_time, now - self._started)
        return self._last_time

    def output(self, data: bytes, now: float) -> list[bytes]:
        """Record what the session wrote to its terminal; returns the chunks cut."""
        if not self._settings.output:
            return []
        return self._record_stream("o", self._output_decoder, data, now)

    def input(self, data: bytes, now: float, *, secret: bool = False) -> list[bytes]:
        """Record what the user typed, if the settings ask for input; returns the chunks cut.

        `secret` input (the terminal is reading a password, see `_commands.reads_secret`) is
        never recorded, whatever the settings say.
        """
        if not self._settings.input or secret:
            return []
        return self._record_stream("i", self._input_decoder, data, now)

    def resize(self, cols: int, rows: int, now: float) -> list[bytes]:
        """Record a new terminal size; returns the chunks cut."""
        if not self._settings.output or not (0 < cols < 100_000 and 0 < rows < 100_000):
            return []
        return self._add_event("r", f"{cols}x{rows}", now)

    def commands(self, commands: Iterable[TypedCommand], now: float) -> list[bytes]:
        """Add commands the command log extracted; they travel signed in the next chunk."""
        cut: list[bytes] = []
        for command in commands:
            size = len(command.command.encode()) + _EVENT_OVERHEAD
            cut += self._make_room(size)
            self._commands.append(command.to_record())
            self._note_pending(size, now)
        return cut

    def next_deadline(self) -> float | None:
        """The monotonic time at which the pending events must be cut; None when none wait."""
        if self._oldest is None:
            return None
        return self._oldest + self._limits.max_chunk_age_s

    def due(self, now: float) -> list[bytes]:
        """Cut the pending chunk if it is old enough; call at `next_deadline`."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        return [self._cut()]

    def close(self, now: float) -> list[bytes]:
        """End the recording; returns the last chunks, the final one last.

        An incomplete UTF-8 sequence left at the end of a stream is recorded as U+FFFD.
        """
        cut: list[bytes] = []
        if self._settings.output:
            cut += self._record_stream("o", self._output_decoder, b"", now, final=True)
        if self._settings.input:
            cut += self._record_stream("i", self._input_decoder, b"", now, final=True)
        cut.append(self._cut(final=True))
        return cut

    def _record_stream(
        self,
        code: str,
        decoder: codecs.IncrementalDecoder,
        data: bytes,
        now: float,
        *,
        final: bool = False,
    ) -> list[bytes]:
        cut: list[bytes] = []
        step = self._limits.max_read_bytes
        for start in range(0, max(len(data), 1), step):
            text = decoder.decode(data[start : start + step], final=final)
            if text:
                cut += self._add_event(code, text, now)
        return cut

    def _add_event(self, code: str, data: str, now: float) -> list[bytes]:
        size = len(data.encode()) + _EVENT_OVERHEAD
        cut = self._make_room(size)
        self._events.append(mrzap_pb2.RecordingEvent(time=self.elapsed(now), code=code, data=data))
        self._note_pending(size, now)
        return cut

    def _make_room(self, size: int) -> list[bytes]:
        if self._pending_bytes and self._pending_bytes + size > self._limits.max_chunk_bytes:
            return [self._cut()]
        return []

    def _note_pending(self, size: int, now: float) -> None:
        self._pending_bytes += size
        if self._oldest is None:
            self._oldest = now

    def _cut(self, *, final: bool = False) -> bytes:
        raw = self._signer.sign_chunk(self._events, self._commands, final=final)
        self._events, self._commands = [], []
        self._pending_bytes = 0
        self._oldest = None
        return raw


class ShellRecording:
    """The recording and the command log of one interactive shell, fed from its terminal.

    Commands are always extracted and signed into the chunks; what of the terminal itself is
    recorded follows the recorder's settings.
    """

    def __init__(self, recorder: SessionRecorder) -> None:
        self.recorder = recorder
        """Where events and commands go."""
        self._commands = CommandExtractor()
        self._screen = AlternateScreenTracker()

    def output(self, data: bytes, now: float) -> list[bytes]:
        """The shell wrote `data` to its terminal; returns the chunks cut."""
        self._screen.feed_output(data)
        return self.recorder.output(data, now)

    def input(self, data: bytes, now: float, *, secret: bool = False) -> list[bytes]:
        """The user typed `data`; `secret` when the terminal reads a password (`reads_secret`)."""
        cut = self.recorder.input(data, now, secret=secret)
        typed = self._commands.feed(
            data, self.recorder.elapsed(now), secret=secret, suspended=self._screen.active
        )
        return cut + self.recorder.commands(typed, now)

    def resize(self, cols: int, rows: int, now: float) -> list[bytes]:
        """The terminal has a new size; returns the chunks cut."""
        return self.recorder.resize(cols, rows, now)

    def next_deadline(self) -> float | None:
        """When `due` must be called next; None when nothing waits."""
        return self.recorder.next_deadline()

    def due(self, now: float) -> list[bytes]:
        """The chunks cut because their time came."""
        return self.recorder.due(now)

    def close(self, now: float) -> list[bytes]:
        """The last chunks, the final one last."""
        return self.recorder.close(now)
