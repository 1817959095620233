"""The broker's check of an agent's answer to its challenge (PROTOCOL.md section 7).

The agent answers `Challenge{nonce}` with `Signed(AgentAuth{target_id, nonce, timestamp_ms,
version})` under the domain `mrzap/v1/agent-auth`. It is accepted only if the signature verifies
with the key the target registered, the nonce is this stream's, and the timestamp is within the
allowed clock skew. The claimed target id is read from the payload before the signature is checked
because it names the key to check with; nothing else in the payload is used until it verifies.
A key registered for another target fails the signature check like any other wrong key.
"""

from __future__ import annotations

import dataclasses
import hmac

from google.protobuf.message import DecodeError

from bastion.agent.v1 import agent_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.envelope import Domain, parse_signed, verify_signature
from mrzap.errors import InvalidArgument, MrzapError, NotFound, Unauthenticated
from mrzap.keys import public_key_from_bytes
from mrzap.verification import VerificationError

from ._directory import TargetDirectory

__all__ = ["AgentIdentity", "Refusal", "authenticate_agent"]

#: How much of a claimed (untrusted) target id appears in logs and audit messages.
_SHOWN_ID_CHARS = 40


@dataclasses.dataclass(frozen=True)
class AgentIdentity:
    """Who an authenticated agent is."""

    target_id: str
    """The target it registered as."""

    version: str
    """The agent's software version, as it reports it."""


class Refusal(Exception):
    """The broker refuses the stream: it sends ControlClose, audits, and ends the call."""

    def __init__(
        self,
        close_reason: pb.ControlCloseReason.ValueType,
        error: MrzapError,
        target_id: str = "",
    ) -> None:
        super().__init__(error.message)
        self.close_reason = close_reason
        """The reason told to the agent in ControlClose."""
        self.error = error
        """The status the call ends with, and the message for the agent and the audit log."""
        self.target_id = target_id
        """The existing target concerned, or empty."""

    @property
    def message(self) -> str:
        """What happened, without secrets."""
        return self.error.message


def shown_id(claimed: str) -> str:
    """An untrusted id made safe to print: shortened and quoted."""
    if len(claimed) > _SHOWN_ID_CHARS:
        claimed = claimed[:_SHOWN_ID_CHARS] + "…"
    return repr(claimed)


async def authenticate_agent(
    first: pb.ControlRequest,
    nonce: bytes,
    directory: TargetDirectory,
    now: float,
    max_clock_skew_s: float,
) -> AgentIdentity:
    """Check the stream's first message; raises Refusal saying why it is not a valid AgentAuth."""
    kind = first.WhichOneof("frame")
    if kind != "agent_auth":
        raise Refusal(
            pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR,
            InvalidArgument(f"the first message must be agent_auth, not {kind or 'an empty one'}"),
        )
    try:
        signed = parse_signed(first.agent_auth)
        auth = mrzap_pb2.AgentAuth.FromString(signed.payload)
    except (VerificationError, DecodeError):
        raise Refusal(
            pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR,
            InvalidArgument("agent_auth is not a signed AgentAuth"),
        ) from None
    claimed = auth.target_id
    try:
        raw_key = await directory.agent_public_key(claimed)
    except NotFound:
        raise Refusal(
            pb.CONTROL_CLOSE_REASON_TARGET_DELETED,
            Unauthenticated(f"unknown target {shown_id(claimed)}; the agent must register again"),
        ) from None
    try:
        verify_signature(signed, public_key_from_bytes(raw_key), Domain.AGENT_AUTH)
    except VerificationError:
        raise Refusal(
            pb.CONTROL_CLOSE_REASON_AUTH_FAILED,
            Unauthenticated("agent_auth does not verify with the key registered for this target"),
            claimed,
        ) from None
    if not hmac.compare_digest(auth.nonce, nonce):
        raise Refusal(
            pb.CONTROL_CLOSE_REASON_AUTH_FAILED,
            Unauthenticated("agent_auth answers another challenge (wrong nonce)"),
            claimed,
        )
    skew_s = auth.timestamp_ms / 1000 - now
    if abs(skew_s) > max_clock_skew_s:
        raise Refusal(
            pb.CONTROL_CLOSE_REASON_AUTH_FAILED,
            Unauthenticated(
                f"the agent's clock is {skew_s:+.0f} s off the broker's "
                f"(at most {max_clock_skew_s:g} s allowed)"
            ),
            claimed,
        )
    return AgentIdentity(claimed, auth.version)
