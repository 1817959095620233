"""A malicious broker for end-to-end tests: it serves `AgentService.Control` to a real agent.

It plays a fully compromised service (PROTOCOL.md section 9): it presents the organisation's own
TLS certificate, so a real `mrzap-agent run` process whose agent.toml points at it connects as it
would to the real broker. It speaks the control stream honestly enough to be believed -- the
Challenge, a real check of the agent's signed AgentAuth, Welcome, keepalives -- and then does
whatever a test tells it: it sends ChannelOpen messages with SYNs the test crafted and channel
frames the test forged, flipped or reordered, and hands back what the agent answers, per channel.

Every message crossing the stream is kept, serialized, in `AgentLink.wire`: that is everything
the broker's network position ever sees, for tests that prove it never holds channel plaintext.

It is a synchronous gRPC server (a thread per stream plus a reader thread) so that plain,
synchronous tests can drive it; it runs inside the test process.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.duration_pb2 import Duration

from bastion.agent.v1 import agent_service_pb2 as pb
from bastion.agent.v1 import agent_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.envelope import Domain, parse_signed, verify_signature
from mrzap.verification import VerificationError

__all__ = ["AgentLink", "EvilBroker"]

#: How often the evil broker sends a keepalive; the agent drops a broker silent for three.
KEEPALIVE_S = 2.0


class AgentLink:
    """One agent's control stream, as the evil broker holds it."""

    def __init__(self, target_id: str) -> None:
        self.target_id = target_id
        """The target the agent authenticated as."""
        self.wire: list[bytes] = []
        """Every serialized ControlResponse sent and ControlRequest received, in order."""
        self.frames: list[bytes] = []
        """Every serialized ChannelFrame relayed, either way: what the channels look like."""
        self.ended = threading.Event()
        """Set when the stream is over."""
        self._outgoing: queue.Queue[pb.ControlResponse | None] = queue.Queue()
        self._channels: dict[str, queue.Queue[pb.ControlRequest]] = {}
        self._lock = threading.Lock()

    # --- what a test does ------------------------------------------------------------------------

    def open_channel(self, channel_id: str, syn: bytes) -> None:
        """Send ChannelOpen{channel_id, syn} to the agent."""
        self._send(pb.ControlResponse(channel_open=pb.ChannelOpen(channel_id=channel_id, syn=syn)))

    def send_frame(self, channel_id: str, frame: mrzap_pb2.Frame) -> None:
        """Send a client-to-agent frame on `channel_id`, exactly as given."""
        self._send(
            pb.ControlResponse(channel_frame=pb.ChannelFrame(channel_id=channel_id, frame=frame))
        )

    def close_channel(self, channel_id: str) -> None:
        """Tell the agent the client of `channel_id` is gone."""
        self._send(pb.ControlResponse(channel_close=pb.ChannelClose(channel_id=channel_id)))

    def next(self, channel_id: str, timeout_s: float) -> pb.ControlRequest:
        """The agent's next message about `channel_id` (answer, frame or close)."""
        try:
            return self._queue(channel_id).get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(
                f"the agent said nothing about channel {channel_id} in {timeout_s:g} s"
            ) from None

    def answer(self, channel_id: str, timeout_s: float) -> pb.ChannelAnswer:
        """The agent's ChannelAnswer (SYN-ACK or Reject) to the ChannelOpen of `channel_id`."""
        message = self.next(channel_id, timeout_s)
        assert message.WhichOneof("frame") == "channel_answer", message
        return message.channel_answer

    # --- the stream's side ---------------------------------------------------------------------

    def _send(self, response: pb.ControlResponse) -> None:
        if self.ended.is_set():
            raise AssertionError("the agent's control stream has ended")
        self._outgoing.put(response)

    def _queue(self, channel_id: str) -> queue.Queue[pb.ControlRequest]:
        with self._lock:
            return self._channels.setdefault(channel_id, queue.Queue())

    def _received(self, request: pb.ControlRequest) -> None:
        self.wire.append(request.SerializeToString())
        kind = request.WhichOneof("frame")
        if kind == "channel_answer":
            self._queue(request.channel_answer.channel_id).put(request)
        elif kind == "channel_frame":
            self.frames.append(request.channel_frame.SerializeToString())
            self._queue(request.channel_frame.channel_id).put(request)
        elif kind == "channel_close":
            self._queue(request.channel_close.channel_id).put(request)
        # Keepalives, recording chunks and the agent's goodbye need no answer here.

    def _responses(self) -> Iterator[pb.ControlResponse]:
        """What goes to the agent: the queue, with keepalives in the silences."""
        while not self.ended.is_set():
            try:
                response = self._outgoing.get(timeout=KEEPALIVE_S)
            except queue.Empty:
                response = pb.ControlResponse(keepalive=pb.Keepalive())
            if response is None:
                return
            self.wire.append(response.SerializeToString())
            if response.HasField("channel_frame"):
                self.frames.append(response.channel_frame.SerializeToString())
            yield response

    def _end(self) -> None:
        self.ended.set()
        self._outgoing.put(None)


class _Servicer(pb_grpc.AgentServiceServicer):
    def __init__(self, broker: EvilBroker) -> None:
        self._broker = broker

    def Control(
        self,
        request_iterator: Iterator[pb.ControlRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[pb.ControlResponse]:
        nonce = secrets.token_bytes(32)
        yield pb.ControlResponse(challenge=pb.Challenge(nonce=nonce))
        first = next(request_iterator, None)
        target_id = self._broker.check_agent_auth(first, nonce)
        if target_id is None:
            yield pb.ControlResponse(
                close=pb.ControlClose(
                    reason=pb.CONTROL_CLOSE_REASON_AUTH_FAILED, message="not the agent expected"
                )
            )
            return
        link = AgentLink(target_id)
        context.add_callback(link._end)
        reader = threading.Thread(
            target=_read_all, args=(request_iterator, link), name="evil-broker-reader", daemon=True
        )
        reader.start()
        yield pb.ControlResponse(
            welcome=pb.Welcome(
                broker_id="evil-broker", keepalive_interval=Duration(seconds=round(KEEPALIVE_S))
            )
        )
        self._broker.links.put(link)
        yield from link._responses()


def _read_all(requests: Iterator[pb.ControlRequest], link: AgentLink) -> None:
    try:
        for request in requests:
            link._received(request)
    except grpc.RpcError:
        pass  # the stream was torn down; its end is what matters
    finally:
        link._end()


class EvilBroker:
    """A broker that a real agent trusts (same TLS certificate) and that lies to it."""

    def __init__(
        self, *, certificate_chain: bytes, private_key: bytes, agent_key: Ed25519PublicKey
    ) -> None:
        """`agent_key` is the registered public key the agent's AgentAuth must verify under."""
        self._agent_key = agent_key
        self.links: queue.Queue[AgentLink] = queue.Queue()
        """Agents that connected and were welcomed, oldest first."""
        self._server: Any = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_AgentServiceServicer_to_server(_Servicer(self), self._server)
        credentials = grpc.ssl_server_credentials([(private_key, certificate_chain)])
        port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self.address = f"127.0.0.1:{port}"
        """Where agents reach it."""

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)

    def wait_agent(self, timeout_s: float) -> AgentLink:
        """The next agent to be welcomed."""
        try:
            return self.links.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no agent connected within {timeout_s:g} s") from None

    def check_agent_auth(self, first: pb.ControlRequest | None, nonce: bytes) -> str | None:
        """The target id of a valid AgentAuth answering `nonce`; None otherwise."""
        if first is None or first.WhichOneof("frame") != "agent_auth":
            return None
        try:
            payload = verify_signature(
                parse_signed(first.agent_auth), self._agent_key, Domain.AGENT_AUTH
            )
        except VerificationError:
            return None
        auth = mrzap_pb2.AgentAuth.FromString(payload)
        return auth.target_id if auth.nonce == nonce else None
