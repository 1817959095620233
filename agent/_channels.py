"""The agent's channels: SYN in, action running, encrypted frames both ways (PROTOCOL.md §5-§7).

The control loop hands every channel message from the broker to `AgentChannels`:

- `ChannelOpen{channel_id, syn}`: `SynHandler` runs the checks of §5; if they pass, `Sessions`
  starts the action (or re-attaches to a shell) and the signed SYN-ACK goes back; otherwise the
  signed Reject. The SYN must name the channel it arrived on, or the broker could splice it.
- frames from the client are opened strictly in order (§6) and act on the session: stdin, resize,
  end of input, window updates, and Close (which ends the connection: the user is done);
- the session's output goes back as sealed `stdout`/`stderr` frames, as large as the pending
  output allows (up to 64 KiB) so a busy shell sends few large frames, and never more than the
  client's credit: when the credit is used up the agent stops reading, the PTY or pipe fills and
  the process itself slows down;
- the process's end goes back as `exit`, then ChannelClose.

A channel failure (bad frame, flow-control breach) is reported to the client in an encrypted
`error` and ends the channel. `ChannelClose` from the broker (the client left), or the control
stream's end, detaches a shell (it keeps running for `zli connect` to re-attach) and ends a
command. A revocation or an expired session ends the connection itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bastion.agent.v1 import agent_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.channel import MAX_FRAME_DATA, Direction, FrameOpener, FrameSealer
from mrzap.handshake import VerifiedSyn
from mrzap.verification import Reason, VerificationError

from ._exec import ExecProcess
from ._pty import Detached, PtyShell, ShellOutput
from ._recording_tap import Recorder, RecordingTap
from ._sessions import Sessions, Started
from ._verifier import Accepted, SynHandler

__all__ = ["DEFAULT_WINDOW", "AgentChannels", "Send"]

_log = logging.getLogger("mrzap.agent.channels")

#: Writes one message on the control stream (serialised with every other writer).
Send = Callable[[pb.ControlRequest], Awaitable[None]]
#: Endings of detached shells kept for the broker while offline; older ones are dropped (their
#: records then close at their session's expiry).
_MAX_UNTOLD_ENDINGS = 1000
#: Endings told on the last stream, told again on the next one.
_RETOLD_ENDINGS = 100

#: The initial credit of each direction (PROTOCOL.md §6).
DEFAULT_WINDOW = 256 * 1024


class _Channel:
    """One open channel: its keys, its session, its credit and its tasks."""

    def __init__(
        self,
        channel_id: str,
        accepted: Accepted,
        started: Started,
        send: Send,
        window: int,
    ) -> None:
        self.channel_id = channel_id
        self.connection_id = started.result.connection_id
        self.verified = accepted.verified
        self.session = started.session
        self.output: ShellOutput | None = started.output
        self._send = send
        self._sealer = FrameSealer(accepted.keys, channel_id, Direction.AGENT_TO_CLIENT)
        self._opener = FrameOpener(accepted.keys, channel_id, Direction.CLIENT_TO_AGENT)
        self._window = window
        self._credit = window  # bytes of output the client still accepts
        self._credit_changed = asyncio.Event()
        self._inbound_credit = window  # bytes of input the client may still send
        self._consumed = 0  # input bytes handled since the last window update we sent
        self._inbound: asyncio.Queue[mrzap_pb2.ChannelMessage] = asyncio.Queue()
        self._send_lock = asyncio.Lock()  # keeps this channel's seq order equal to send order
        self.over = False
        self.tasks: list[asyncio.Task[None]] = []

    # --- sending ---------------------------------------------------------------------------------

    async def send_message(self, message: mrzap_pb2.ChannelMessage) -> None:
        async with self._send_lock:
            frame = self._sealer.seal(message)
            await self._send(
                pb.ControlRequest(
                    channel_frame=pb.ChannelFrame(channel_id=self.channel_id, frame=frame)
                )
            )

    async def send_close(self, reason: str, *, detached: bool = False) -> None:
        """End the channel; `detached` says its shell runs on for re-attachment."""
        await self._send(
            pb.ControlRequest(
                channel_close=pb.ChannelClose(
                    channel_id=self.channel_id, reason=reason, detached=detached
                )
            )
        )

    async def credit(self) -> int:
        """The client's credit for output, once there is some."""
        while self._credit <= 0:
            self._credit_changed.clear()
            await self._credit_changed.wait()
        return self._credit

    async def send_output(self, field: str, data: bytes) -> None:
        """Send output as `field` frames, never past the client's credit.

        stdout and stderr are read concurrently, each up to the credit it saw, so together
        they may hold more than the credit left: the rest waits here for the client's update.
        """
        view = memoryview(data)
        while view:
            chunk = bytes(view[: await self.credit()])
            self._credit -= len(chunk)  # no await between the check and this: one owner
            message = mrzap_pb2.ChannelMessage()
            setattr(message, field, chunk)
            await self.send_message(message)
            view = view[len(chunk) :]

    # --- receiving -------------------------------------------------------------------------------

    def receive(self, frame: mrzap_pb2.Frame) -> None:
        """Open a frame and queue it for the input task; raises VerificationError."""
        message = self._opener.open(frame)
        kind = message.WhichOneof("message")
        if kind == "window_update":
            self._credit += message.window_update.bytes
            self._credit_changed.set()
            return
        if kind in ("stdin", "data"):
            self._inbound_credit -= len(getattr(message, kind))
            if self._inbound_credit < 0:
                raise VerificationError(
                    Reason.TOO_LARGE, "the client sent more input than its credit allows"
                )
        self._inbound.put_nowait(message)

    async def consumed(self, count: int) -> None:
        """Input was handed to the process; grant the client more once half the window is used."""
        self._consumed += count
        if self._consumed >= self._window // 2:
            granted, self._consumed = self._consumed, 0
            self._inbound_credit += granted
            await self.send_message(
                mrzap_pb2.ChannelMessage(window_update=mrzap_pb2.WindowUpdate(bytes=granted))
            )

    async def next_input(self) -> mrzap_pb2.ChannelMessage:
        return await self._inbound.get()


class AgentChannels:
    """Every channel open on the current control stream."""

    def __init__(
        self,
        handler: SynHandler,
        sessions: Sessions,
        *,
        window: int = DEFAULT_WINDOW,
        recorder: Recorder | None = None,
    ) -> None:
        """Without `recorder`, nothing is recorded (tests of the channel layer only)."""
        self.handler = handler
        """Verifies SYNs and revocations."""
        self.sessions = sessions
        """The running connections (which outlive channels and control streams)."""
        self.recorder = recorder
        """Records sessions as their grants ask; its uplink outlives control streams."""
        # The recordings of running commands, by connection id (a shell's lives in its PtyShell).
        self._exec_taps: dict[str, RecordingTap] = {}
        self._window = window
        self._channels: dict[str, _Channel] = {}
        # Channels whose SYN is being verified, and those of them the client left meanwhile.
        self._opening: set[str] = set()
        self._left_while_opening: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Detached shells that ended by themselves, until the broker has heard (ConnectionEnded):
        # (connection id, whether it is told a second time). Those told on a stream are told once
        # more on the next: the stream may have ended with them unhandled, and telling the broker
        # again changes nothing if it had handled them.
        self._ended: collections.deque[tuple[str, bool]] = collections.deque(
            maxlen=_MAX_UNTOLD_ENDINGS
        )
        self._told: collections.deque[str] = collections.deque(maxlen=_RETOLD_ENDINGS)
        self._stream: Send | None = None
        sessions.on_detached_end = self._ended_detached

    def __len__(self) -> int:
        return len(self._channels)

    def handle(self, message: pb.ControlResponse, send: Send) -> bool:
        """Act on a channel message or revocation from the broker; False if it is neither."""
        kind = message.WhichOneof("frame")
        if kind == "channel_open":
            self._spawn(self._open(message.channel_open, send))
        elif kind == "channel_frame":
            self._frame(message.channel_frame)
        elif kind == "channel_close":
            channel_id = message.channel_close.channel_id
            channel = self._channels.pop(channel_id, None)
            if channel is not None:
                self._spawn(self._detach(channel))
            elif channel_id in self._opening:
                self._left_while_opening.add(channel_id)
        elif kind == "revocation":
            self._spawn(self._revoke(message.revocation))
        else:
            return False
        return True

    def connected(self, send: Send) -> None:
        """A control stream is up: tell the broker which detached shells ended meanwhile."""
        self._stream = send
        self._ended.extendleft((told, True) for told in reversed(self._told))
        self._told.clear()
        if self._ended:
            self._spawn(self._tell_endings(send))

    async def detach_all(self) -> None:
        """The control stream ended: every channel ends; shells keep running detached."""
        self._stream = None
        channels, self._channels = list(self._channels.values()), {}
        self._left_while_opening |= self._opening  # their answers have nowhere to go
        await asyncio.gather(*(self._detach(channel) for channel in channels))

    def _ended_detached(self, connection_id: str) -> None:
        self._ended.append((connection_id, False))
        if self._stream is not None and len(self._ended) == 1:  # else a telling is under way
            self._spawn(self._tell_endings(self._stream))

    async def _tell_endings(self, send: Send) -> None:
        while self._ended:
            first = self._ended[0]
            ended = pb.ConnectionEnded(connection_id=first[0])
            try:
                await send(pb.ControlRequest(connection_ended=ended))
            except Exception:  # the stream broke: the next one tells (see `connected`)
                return
            # A stream that broke first leaves it for the next one.
            if self._ended and self._ended[0] is first:
                self._ended.popleft()
                if not first[1]:
                    self._told.append(first[0])

    async def enforce_expiry(self) -> None:
        """End connections whose grant was revoked or whose session expired."""
        await self.sessions.end_invalid(self.handler.still_valid)

    # --- opening ---------------------------------------------------------------------------------

    async def _open(self, open_: pb.ChannelOpen, send: Send) -> None:
        channel_id = open_.channel_id
        started: list[Started] = []
        duplicate = channel_id in self._channels or channel_id in self._opening

        async def start(verified: VerifiedSyn) -> mrzap_pb2.ActionResult:
            if verified.syn.channel_id != channel_id:
                raise VerificationError(
                    Reason.MALFORMED, "the SYN names another channel than the one it came on"
                )
            if duplicate:
                raise VerificationError(Reason.MALFORMED, "the channel is already open")
            started.append(await self.sessions.start(verified))
            self._record(verified, started[0])
            return started[0].result

        if duplicate:
            answer = await self.handler.answer(open_.syn, start)
        else:
            self._opening.add(channel_id)
            try:
                answer = await self.handler.answer(open_.syn, start)
            finally:
                self._opening.discard(channel_id)
        if not duplicate and channel_id in self._left_while_opening:
            # Nobody will read the answer: a new shell stays for re-attachment, a command ends.
            self._left_while_opening.discard(channel_id)
            if isinstance(answer, Accepted):
                channel = _Channel(channel_id, answer, started[0], send, self._window)
                await self._detach(channel)
            return
        if not isinstance(answer, Accepted):
            await send(
                pb.ControlRequest(
                    channel_answer=pb.ChannelAnswer(
                        channel_id=channel_id, reject=answer.signed_reject
                    )
                )
            )
            return
        channel = _Channel(channel_id, answer, started[0], send, self._window)
        # Registered before the SYN-ACK leaves: the client's first frame may follow at once.
        self._channels[channel_id] = channel
        await send(
            pb.ControlRequest(
                channel_answer=pb.ChannelAnswer(channel_id=channel_id, syn_ack=answer.signed_synack)
            )
        )
        channel.tasks = [
            self._spawn(self._pump_output(channel)),
            self._spawn(self._pump_input(channel)),
        ]

    def _record(self, verified: VerifiedSyn, started: Started) -> None:
        """Start recording a new shell or command, before any of its output can be read.

        Nothing awaits between the session's start and this call, so the recording begins with
        its first output. A re-attached shell keeps the recording it has.
        """
        connection_id = started.result.connection_id
        if self.recorder is not None and isinstance(started.session, ExecProcess):
            tap = self.recorder.start_exec(connection_id, verified.grant, verified.syn.exec.command)
            if tap is not None:
                self._exec_taps[connection_id] = tap
            return
        action = verified.syn.shell_open
        if (
            self.recorder is None
            or not verified.syn.HasField("shell_open")
            or not isinstance(started.session, PtyShell)
        ):
            return
        self.recorder.start_shell(
            started.session,
            started.result.connection_id,
            verified.grant,
            rows=action.rows or 24,
            cols=action.cols or 80,
        )

    # --- frames ----------------------------------------------------------------------------------

    def _frame(self, relayed: pb.ChannelFrame) -> None:
        channel = self._channels.get(relayed.channel_id)
        if channel is None:
            return  # ended here already; the broker forgets it at our ChannelClose
        try:
            channel.receive(relayed.frame)
        except VerificationError as error:
            _log.warning("channel %s ended: %s", channel.channel_id, error.message)
            self._channels.pop(channel.channel_id, None)
            self._spawn(self._fail(channel, error))

    async def _pump_input(self, channel: _Channel) -> None:
        session = channel.session
        while True:
            message = await channel.next_input()
            kind = message.WhichOneof("message")
            if kind == "stdin":
                tap = self._exec_taps.get(channel.connection_id)
                if tap is not None:
                    tap.input(message.stdin)  # a shell's tap sees its input in the PtyShell
                try:
                    await session.write_stdin(message.stdin)
                except (BrokenPipeError, ConnectionResetError):
                    continue  # the process is gone; its exit status is on its way
                await channel.consumed(len(message.stdin))
            elif kind == "resize" and isinstance(session, PtyShell):
                session.resize(message.resize.rows, message.resize.cols)
            elif kind == "end_of_input" and isinstance(session, ExecProcess):
                await session.end_input()
            elif kind == "close":
                # The user ends the connection; the output pump reports the exit and closes.
                await self.sessions.close(channel.connection_id)
                return

    async def _pump_output(self, channel: _Channel) -> None:
        session = channel.session
        try:
            if isinstance(session, PtyShell):
                assert channel.output is not None
                await self._shell_output(channel, channel.output)
            else:
                await asyncio.gather(
                    self._pipe_output(channel, "stdout", session.read_stdout),
                    self._pipe_output(channel, "stderr", session.read_stderr),
                )
            status = await session.wait()
        except Detached:
            return
        self._end_recording(channel.connection_id)
        await channel.send_message(
            mrzap_pb2.ChannelMessage(exit=mrzap_pb2.Exit(code=status.code, signal=status.signal))
        )
        await self._end(channel, f"the process ended ({status})")

    async def _shell_output(self, channel: _Channel, output: ShellOutput) -> None:
        while True:
            data = await output.read(min(await channel.credit(), MAX_FRAME_DATA))
            if not data:
                return
            await channel.send_output("stdout", data)

    async def _pipe_output(
        self, channel: _Channel, field: str, read: Callable[[int], Awaitable[bytes]]
    ) -> None:
        tap = self._exec_taps.get(channel.connection_id)
        while True:
            if tap is not None:
                await tap.room()  # a full recording uplink pauses the command, as a slow client
            data = await read(min(await channel.credit(), MAX_FRAME_DATA))
            if not data:
                return
            if tap is not None:
                tap.output(data)
            await channel.send_output(field, data)

    # --- endings ---------------------------------------------------------------------------------

    async def _end(self, channel: _Channel, reason: str) -> None:
        """The action is over: forget the channel and tell the broker."""
        if self._channels.get(channel.channel_id) is channel:
            del self._channels[channel.channel_id]
        for task in channel.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        with contextlib.suppress(Exception):  # the control stream may be gone already
            await channel.send_close(reason)

    async def _fail(self, channel: _Channel, error: VerificationError) -> None:
        with contextlib.suppress(Exception):
            await channel.send_message(
                mrzap_pb2.ChannelMessage(
                    error=mrzap_pb2.ChannelError(code=error.reason.to_wire(), message=error.detail)
                )
            )
        await self._detach(channel)
        # A shell outlives a broken channel: the broker records it as detached, not closed.
        runs_on = isinstance(channel.session, PtyShell) and channel.session.exit_status is None
        with contextlib.suppress(Exception):
            await channel.send_close(error.message, detached=runs_on)

    async def _detach(self, channel: _Channel) -> None:
        """The client is gone: a shell keeps running for re-attachment, a command ends."""
        for task in channel.tasks:
            task.cancel()
        session = channel.session
        if isinstance(session, PtyShell):
            if channel.output is not None and not channel.output.detached:
                session.detach()
        else:
            await self.sessions.close(channel.connection_id)
            self._end_recording(channel.connection_id)

    def _end_recording(self, connection_id: str) -> None:
        """A command ended: its recording's final chunk."""
        tap = self._exec_taps.pop(connection_id, None)
        if tap is not None:
            tap.close()

    async def _revoke(self, signed_bytes: bytes) -> None:
        try:
            signed = mrzap_pb2.Signed.FromString(signed_bytes)
            revocation = self.handler.add_revocation(signed)
        except Exception as error:  # a forged or damaged revocation changes nothing
            _log.warning("ignored a revocation that does not verify: %s", error)
            return
        _log.info("revocation %s in force", revocation.revocation_id)
        await self.enforce_expiry()

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("channel work failed", exc_info=task.exception())
