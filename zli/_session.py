"""Moving bytes between the local streams and an open channel, for a shell or a command.

Two loops run side by side until the process on the target ends:

- input: read what is available on stdin (up to the agent's credit and one frame's worth) and
  send it as one frame; in a shell on a terminal, `~.` after a newline detaches (zli._escape);
  at end of file, a command gets `end_of_input`;
- output: write stdout and stderr where they belong, then grant the agent the credit back; the
  `exit` message gives zli's exit status.

A shell also follows the terminal's size (SIGWINCH → resize).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal

from bastion.mrzap.v1 import mrzap_pb2
from mrzap.channel import MAX_FRAME_DATA
from mrzap.errors import Unavailable

from ._channel import ClientChannel
from ._escape import HELP, Escape, EscapeScanner
from ._terminal import FdReader, FdWriter, window_size

__all__ = ["Ended", "Streams", "exit_status", "run_session"]

#: What a shell's exit status is when a signal ended it (as shells report it).
_SIGNAL_BASE = 128


@dataclasses.dataclass(frozen=True)
class Streams:
    """The local descriptors a session uses."""

    stdin: int = 0
    """Where input comes from."""

    stdout: int = 1
    """Where the process's terminal output or stdout goes."""

    stderr: int = 2
    """Where a command's stderr goes."""


@dataclasses.dataclass(frozen=True)
class Ended:
    """How a session ended: the process's exit status, or the user detached."""

    status: int
    """The exit status to end zli with (0 when detached)."""

    detached: bool = False
    """Whether the user detached, leaving the shell running."""


def exit_status(exit: mrzap_pb2.Exit) -> int:
    """The exit status a shell would report for `exit`."""
    return _SIGNAL_BASE + exit.signal if exit.signal else exit.code


async def run_session(
    channel: ClientChannel,
    streams: Streams = Streams(),
    *,
    escapes: bool = False,
    follow_size: bool = False,
) -> Ended:
    """Run until the remote process ends (or the user detaches with `escapes` on)."""
    loop = asyncio.get_running_loop()
    writers: list[FdWriter] = []
    try:
        stdout = FdWriter(streams.stdout)
        writers.append(stdout)
        stderr = FdWriter(streams.stderr) if streams.stderr != streams.stdout else stdout
        if stderr is not stdout:
            writers.append(stderr)
        if channel.replay:
            await stdout.write(channel.replay)
        reader = FdReader(streams.stdin)
        inputs = asyncio.ensure_future(_pump_input(channel, reader, stdout, escapes=escapes))
        outputs = asyncio.ensure_future(_pump_output(channel, stdout, stderr))
        if follow_size:
            loop.add_signal_handler(signal.SIGWINCH, _on_resize, channel, streams.stdin)
        try:
            return await _first_ending(channel, inputs, outputs)
        finally:
            if follow_size:
                loop.remove_signal_handler(signal.SIGWINCH)
            for task in (inputs, outputs):
                task.cancel()
            for task in (inputs, outputs):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            reader.close()
    finally:
        for writer in reversed(writers):  # they may share one open file: undo in reverse
            writer.restore()


async def _first_ending(
    channel: ClientChannel, inputs: asyncio.Task[bool], outputs: asyncio.Task[int]
) -> Ended:
    done, _ = await asyncio.wait((inputs, outputs), return_when=asyncio.FIRST_COMPLETED)
    if outputs in done:
        return Ended(outputs.result())
    if inputs.result():  # detached
        channel.detach()
        return Ended(0, detached=True)
    return Ended(await outputs)  # end of input: the process carries on until it exits


async def _pump_input(
    channel: ClientChannel, reader: FdReader, stdout: FdWriter, *, escapes: bool
) -> bool:
    """Send stdin until end of file (False) or a detach escape (True)."""
    scanner = EscapeScanner() if escapes else None
    while True:
        credit = await channel.credit.wait()
        data = await reader.read(min(credit, MAX_FRAME_DATA))
        if not data:
            await channel.end_input()
            return False
        if scanner is None:
            await channel.send_input(data)
            continue
        for part in scanner.feed(data):
            if part is Escape.DETACH:
                return True
            if part is Escape.HELP:
                await stdout.write(HELP.encode())
            elif isinstance(part, bytes):
                await channel.send_input(part)


async def _pump_output(channel: ClientChannel, stdout: FdWriter, stderr: FdWriter) -> int:
    """Write the process's output until its exit; its exit status."""
    status: int | None = None
    while (message := await channel.receive()) is not None:
        kind = message.WhichOneof("message")
        if kind in ("stdout", "stderr"):
            data: bytes = getattr(message, kind)
            try:
                await (stdout if kind == "stdout" else stderr).write(data)
            except BrokenPipeError:
                # Whoever read our output is gone (`zli exec … | head`): end the command as a
                # shell pipeline would, rather than letting it run on for nobody.
                channel.detach()
                return _SIGNAL_BASE + signal.SIGPIPE
            await channel.consumed(len(data))
        elif kind == "exit":
            status = exit_status(message.exit)
            await channel.finish_writing()  # then read on until the broker ends the call
        elif kind == "close":
            await channel.finish_writing()
    if status is None:
        raise Unavailable(
            f"target {channel.request.target_name} ended the connection without an exit status"
        )
    return status


def _on_resize(channel: ClientChannel, fd: int) -> None:
    rows, cols = window_size(fd)
    task = asyncio.ensure_future(channel.resize(rows, cols))
    # A resize that cannot be sent any more is of no interest: the channel's end is reported.
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
