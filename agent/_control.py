"""The agent's end of the control stream (PROTOCOL.md section 7), and reconnection.

One session: dial the broker, answer `Challenge{nonce}` with `Signed(AgentAuth)` under the agent
key, wait for `Welcome`, then keep the stream alive until it ends (the first session of the
process says `started` right after Welcome, so the broker closes what ran here before):

- every broker keepalive is answered at once;
- the agent sends a keepalive of its own when it has sent nothing for the Welcome's interval;
- a broker silent for three intervals is presumed gone and the stream is dropped.

Between sessions the agent waits with exponential back-off and full jitter (`Backoff`), or as the
broker's ControlClose says: `retry_after`, a long wait after an authentication failure, or no
reconnection at all when the target was deleted or another agent took over. The loop sleeps on
the stream and on its next deadline only, so an idle agent costs no CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.agent.v1 import agent_service_pb2 as pb
from bastion.agent.v1 import agent_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import __version__
from mrzap.envelope import Domain, sign
from mrzap.errors import MrzapError
from mrzap.timestamps import to_timestamp

from ._backoff import Backoff
from ._channels import AgentChannels
from ._config import AgentConfig

__all__ = ["READY_LINE", "AgentStopped", "ControlLoop"]

#: Logged when the broker's Welcome arrives; tests and `mrzapd up` wait for it.
READY_LINE = "mrzap-agent online as {target_id}"

#: The broker's challenge must come within this time of dialling.
_HANDSHAKE_TIMEOUT_S = 15.0
#: Welcome may take longer: a broker busy admitting a crowd of reconnecting agents queues them,
#: and waiting beats dialling again.
_WELCOME_TIMEOUT_S = 60.0
#: Used when the Welcome names no interval.
_DEFAULT_KEEPALIVE_S = 20.0
#: A broker silent for this many keepalive intervals is presumed gone.
_SILENCE_INTERVALS = 3
#: After SIGTERM, how long to wait for the broker to end the stream after our ControlClose.
_GOODBYE_TIMEOUT_S = 2.0

#: The broker's messages the reading task hands straight to the channels.
_SHORTCUT_KINDS = frozenset({"channel_frame", "channel_close"})
_CLOSE_NAMES = {
    value: name.removeprefix("CONTROL_CLOSE_REASON_")
    for name, value in pb.ControlCloseReason.items()
}


class AgentStopped(MrzapError):
    """The agent must not reconnect: its target is gone, or another agent holds it."""


@dataclasses.dataclass
class _Ended:
    """How a session ended."""

    reason: str
    """In words, for the log."""

    online_s: float | None = None
    """How long the stream was up after Welcome; None if it never got there."""

    close: pb.ControlClose | None = None
    """The broker's ControlClose, if it sent one."""


class _Reader:
    """Reads the stream in one task, without cancelling a read (that would end the call).

    Once the agent is online, channel messages are handed to `shortcut` as they arrive, in this
    task: a keystroke then costs one read, not a read task and a deadline wait in the control
    loop as well. Everything else (challenge, welcome, keepalives, close) and how the stream
    ended is queued for `next`, in order.
    """

    def __init__(self, call: Any, stopping: asyncio.Future[Any]) -> None:  # noqa: ANN401 - grpc
        self._call = call
        self._stopping = stopping
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self.shortcut: Callable[[pb.ControlResponse], bool] | None = None
        """Handles a message in the reading task and says whether it did; None handles none."""
        self.heard_at = time.monotonic()
        """When the broker last sent anything (monotonic seconds)."""

    async def _read_all(self) -> None:
        try:
            while True:
                message = await self._call.read()
                self.heard_at = time.monotonic()
                if message is grpc.aio.EOF:
                    self._queue.put_nowait(message)
                    return
                shortcut = self.shortcut
                if shortcut is None or not shortcut(message):
                    self._queue.put_nowait(message)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the call broke, or handling failed: `next` raises it
            self._queue.put_nowait(error)

    async def next(self, timeout_s: float) -> pb.ControlResponse | None:
        """The next message; None on timeout or stop. Raises EOFError when the stream ends."""
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._read_all())
        if self._queue.empty():
            waiting = asyncio.ensure_future(self._queue.get())
            done, _ = await asyncio.wait(
                (waiting, self._stopping),
                timeout=max(timeout_s, 0.0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if waiting not in done:
                waiting.cancel()  # a cancelled Queue.get takes nothing from the queue
                return None
            item = waiting.result()
        else:
            item = self._queue.get_nowait()
        if isinstance(item, Exception):
            raise item
        if item is grpc.aio.EOF:
            raise EOFError
        assert isinstance(item, pb.ControlResponse)
        return item

    async def drain(self) -> None:
        """Read and drop messages until the broker ends the stream."""
        self.shortcut = None
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._read_all())
        # Shielded: a timeout around drain() must not cancel the read (and the call).
        # What it queued meanwhile (a broken call included) no longer matters: the stream ends.
        await asyncio.shield(self._pump)

    def cancel(self) -> None:
        """Drop the reading task (the call is being torn down anyway)."""
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None


class ControlLoop:
    """Keeps one agent connected to the service until told to stop."""

    def __init__(
        self,
        config: AgentConfig,
        key: Ed25519PrivateKey,
        *,
        backoff: Backoff | None = None,
        logger: logging.Logger | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        channels: AgentChannels | None = None,
    ) -> None:
        """Without `channels` the agent stays online but opens no channel (answers nothing)."""
        self._config = config
        self._channels = channels
        self._key = key
        self._backoff = backoff or Backoff()
        self._log = logger or logging.getLogger("mrzap.agent")
        # Each session gets its own connection (a new channel with a private subchannel pool),
        # so a reconnection really dials again and our back-off, not gRPC's, paces it.
        self._channel_options = (("grpc.use_local_subchannel_pool", 1), *channel_options)
        self._credentials = grpc.ssl_channel_credentials(root_certificates=config.ca_pem)
        self.online = False
        """Whether the agent holds a welcomed stream right now."""
        self._announced_start = False

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, stay connected, reconnect; return once `stop` is set (after saying goodbye).

        Raises AgentStopped when the broker says the agent must not reconnect.
        """
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                ended = await self._session(stopping)
                self.online = False
                if stop.is_set():
                    break
                delay = self._delay_after(ended)
                self._log.info(
                    "mrzap-agent offline: %s; reconnecting in %.1f s", ended.reason, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopping), delay)
        finally:
            stopping.cancel()

    def _delay_after(self, ended: _Ended) -> float:
        if ended.online_s is not None:
            self._backoff.stream_ended(ended.online_s)
        close = ended.close
        if close is None:
            return self._backoff.next_delay()
        if close.reason in (
            pb.CONTROL_CLOSE_REASON_TARGET_DELETED,
            pb.CONTROL_CLOSE_REASON_SUPERSEDED,
        ):
            raise AgentStopped(f"not reconnecting: {ended.reason}")
        if close.reason == pb.CONTROL_CLOSE_REASON_AUTH_FAILED:
            return self._backoff.long_delay()
        retry_after = close.retry_after.ToTimedelta().total_seconds()
        if retry_after > 0:
            return retry_after + self._backoff.next_delay()
        return self._backoff.next_delay()

    async def _session(self, stopping: asyncio.Future[Any]) -> _Ended:
        """One stream, from dialling to its end."""
        async with grpc.aio.secure_channel(
            self._config.server, self._credentials, options=self._channel_options
        ) as channel:
            call: Any = pb_grpc.AgentServiceStub(channel).Control()
            reader = _Reader(call, stopping)
            try:
                return await self._converse(call, reader, stopping)
            except (EOFError, asyncio.InvalidStateError):
                # InvalidStateError: a write raced the broker ending the call.
                return _Ended("the broker ended the stream")
            except grpc.aio.AioRpcError as error:
                return _Ended(f"{error.code().name}: {error.details() or 'no details'}")
            finally:
                reader.cancel()
                call.cancel()

    async def _converse(
        self,
        call: Any,  # noqa: ANN401 - grpc's stream call
        reader: _Reader,
        stopping: asyncio.Future[Any],
    ) -> _Ended:
        challenge = await reader.next(_HANDSHAKE_TIMEOUT_S)
        if challenge is None:
            return _Ended("stopped" if stopping.done() else "no challenge from the broker")
        if challenge.WhichOneof("frame") != "challenge":
            return self._unexpected(challenge, "challenge")
        await call.write(pb.ControlRequest(agent_auth=self._agent_auth(challenge.challenge.nonce)))
        welcome = await reader.next(_WELCOME_TIMEOUT_S)
        if welcome is None:
            return _Ended("stopped" if stopping.done() else "no welcome from the broker")
        if welcome.WhichOneof("frame") != "welcome":
            return self._unexpected(welcome, "welcome")
        return await self._stay_online(call, reader, stopping, welcome.welcome)

    async def _stay_online(
        self,
        call: Any,  # noqa: ANN401 - grpc's stream call
        reader: _Reader,
        stopping: asyncio.Future[Any],
        welcome: pb.Welcome,
    ) -> _Ended:
        interval = welcome.keepalive_interval.ToTimedelta().total_seconds() or _DEFAULT_KEEPALIVE_S
        # Channels write from their own tasks; grpc allows one write at a time per call.
        write_lock = asyncio.Lock()

        async def write(request: pb.ControlRequest) -> None:
            async with write_lock:
                await call.write(request)

        async def send(request: pb.ControlRequest) -> None:
            # grpc.aio cancels the whole call when a write is cancelled halfway, and a channel's
            # tasks are cancelled whenever its client leaves: shielded, a write finishes in its
            # own task, so one client leaving cannot take the agent offline with every channel.
            await asyncio.shield(write(request))

        self.online = True
        self._log.info(
            READY_LINE.format(target_id=self._config.target_id)
            + f" (broker {welcome.broker_id}"
            + (f", region {welcome.region})" if welcome.region else ")")
        )
        if not self._announced_start:
            # Whatever the broker believes runs here from before this process has ended.
            await send(pb.ControlRequest(started=pb.AgentStarted()))
            self._announced_start = True
        if self._channels is not None:
            self._channels.connected(send)
        recorder = None if self._channels is None else self._channels.recorder
        if recorder is not None:
            # Recording chunks queued while offline (and those maybe lost with the last stream)
            # go up on this one, in order.
            recorder.uplink.connected(send, compress=welcome.accepts_compressed_recording_chunks)
        try:
            return await self._online_loop(call, reader, stopping, send, interval)
        finally:
            if recorder is not None:
                recorder.uplink.disconnected()
            if self._channels is not None:
                await self._channels.detach_all()

    async def _online_loop(
        self,
        call: Any,  # noqa: ANN401 - grpc's stream call
        reader: _Reader,
        stopping: asyncio.Future[Any],
        send: Callable[[pb.ControlRequest], Awaitable[None]],
        interval: float,
    ) -> _Ended:
        """Keepalives, channel messages and session expiry until the stream ends."""
        silence = interval * _SILENCE_INTERVALS
        online_at = last_sent = time.monotonic()
        channels = self._channels
        if channels is not None:

            def relay(message: pb.ControlResponse) -> bool:
                # Frames and closes are handled as they are read (see _Reader): the hot path of
                # a shell. Opens still come through this loop, which then sleeps until the new
                # connection's session expiry at the latest.
                return message.WhichOneof("frame") in _SHORTCUT_KINDS and channels.handle(
                    message, send
                )

            reader.shortcut = relay
        while True:
            expiry = self._expiry_deadline()
            deadline = min(last_sent + interval, reader.heard_at + silence, expiry)
            message = await reader.next(deadline - time.monotonic())
            now = time.monotonic()
            last_heard = reader.heard_at
            if self._channels is not None and now >= expiry:
                await self._channels.enforce_expiry()
            if stopping.done():
                await self._flush_recordings()
                await self._goodbye(call, reader, send)
                return _Ended("stopped", now - online_at)
            if message is None:
                if now - last_heard >= silence:
                    return _Ended(
                        f"no keepalive from the broker for {silence:g} s", now - online_at
                    )
                if now - last_sent >= interval:
                    await send(self._keepalive())
                    last_sent = now
                continue
            kind = message.WhichOneof("frame")
            if kind == "keepalive":
                await send(self._keepalive())
                last_sent = now
            elif kind == "close":
                reason = _CLOSE_NAMES.get(message.close.reason, str(message.close.reason))
                text = f"the broker closed the stream ({reason}: {message.close.message})"
                return _Ended(text, now - online_at, message.close)
            elif self._channels is None or not self._channels.handle(message, send):
                # Opening nothing is the safe answer to anything the agent does not know.
                self._log.debug("ignoring %s from the broker", kind)

    def _expiry_deadline(self) -> float:
        """When (monotonic) the next running connection's session expires; far away if none."""
        expiry = None if self._channels is None else self._channels.sessions.next_expiry()
        if expiry is None:
            return time.monotonic() + 3600.0
        return time.monotonic() + (expiry - time.time())

    async def _flush_recordings(self) -> None:
        """The agent stops: end the recorded shells now, while the stream is up, so their final
        chunks reach the broker and the recordings are complete rather than cut short."""
        recorder = None if self._channels is None else self._channels.recorder
        if self._channels is None or recorder is None:
            return
        await self._channels.sessions.close_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recorder.uplink.flushed(), _GOODBYE_TIMEOUT_S)

    async def _goodbye(
        self,
        call: Any,  # noqa: ANN401 - grpc's stream call
        reader: _Reader,
        send: Callable[[pb.ControlRequest], Awaitable[None]],
    ) -> None:
        """Send ControlClose{SHUTDOWN}, half-close, and give the broker a moment to end the call.

        The agent keeps reading meanwhile: a broker with channel frames still queued for the
        agent must get them out before it reaches our close.
        """
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, TimeoutError):
            await send(
                pb.ControlRequest(
                    close=pb.ControlClose(
                        reason=pb.CONTROL_CLOSE_REASON_SHUTDOWN, message="the agent is stopping"
                    )
                )
            )
            await call.done_writing()
            await asyncio.wait_for(reader.drain(), _GOODBYE_TIMEOUT_S)
        reader.cancel()

    def _agent_auth(self, nonce: bytes) -> bytes:
        payload = mrzap_pb2.AgentAuth(
            target_id=self._config.target_id,
            nonce=nonce,
            timestamp_ms=round(time.time() * 1000),
            version=__version__,
        ).SerializeToString()
        return sign(self._key, Domain.AGENT_AUTH, payload).SerializeToString()

    def _keepalive(self) -> pb.ControlRequest:
        return pb.ControlRequest(keepalive=pb.Keepalive(send_time=to_timestamp(time.time())))

    def _unexpected(self, message: pb.ControlResponse, wanted: str) -> _Ended:
        if message.WhichOneof("frame") == "close":
            reason = _CLOSE_NAMES.get(message.close.reason, str(message.close.reason))
            text = f"the broker refused the agent ({reason}: {message.close.message})"
            return _Ended(text, None, message.close)
        return _Ended(f"the broker sent {message.WhichOneof('frame')} instead of {wanted}")
