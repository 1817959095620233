"""The signed handshake: SYN, SYN-ACK and Reject (PROTOCOL.md section 5).

The client builds a SYN signed with its session key, carrying both roots of trust (PK token and
grant). The agent's `SynVerifier` runs the checks in exactly the order of section 5, rejecting at
the first failure with a stable reason; then the agent answers with a signed SYN-ACK (and both
sides derive the channel keys) or a signed Reject.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.message import DecodeError

from bastion.mrzap.v1 import mrzap_pb2

from .channel import ChannelKeys, derive_channel_keys, new_key_exchange
from .clock import Clock, SystemClock
from .config import AgentLocalPolicy
from .envelope import Domain, parse_signed, sign, signed_hash, verify_signature
from .grant import verify_grant
from .keys import public_key_from_bytes
from .pktoken import PkTokenVerifier, VerifiedIdentity
from .replay import ReplayCache
from .revocation import RevocationList
from .timestamps import from_timestamp
from .verification import Reason, VerificationError

__all__ = [
    "CLOCK_WINDOW_S",
    "MAX_SYN_BYTES",
    "PROTOCOL_VERSION",
    "Action",
    "ClientHandshake",
    "EstablishedHandshake",
    "SynVerifier",
    "VerifiedSyn",
    "accept_syn",
    "build_syn",
    "reject_syn",
    "verify_reject",
    "verify_synack",
]

PROTOCOL_VERSION = 1
#: Largest signed SYN an agent parses.
MAX_SYN_BYTES = 64 * 1024
#: Largest difference between the SYN's timestamp and the agent's clock.
CLOCK_WINDOW_S = 120.0
_RAW_KEY_BYTES = 32

Action = (
    mrzap_pb2.ShellOpen
    | mrzap_pb2.ShellAttach
    | mrzap_pb2.Exec
    | mrzap_pb2.TunnelOpen
    | mrzap_pb2.KubeOpen
    | mrzap_pb2.FileOpen
)

# The oneof field of each action, and the verb a grant must name for it.
_ACTIONS: dict[str, tuple[str, mrzap_pb2.Verb.ValueType]] = {
    "ShellOpen": ("shell_open", mrzap_pb2.VERB_SHELL),
    "ShellAttach": ("shell_attach", mrzap_pb2.VERB_SHELL),
    "Exec": ("exec", mrzap_pb2.VERB_EXEC),
    "TunnelOpen": ("tunnel_open", mrzap_pb2.VERB_TUNNEL),
    "KubeOpen": ("kube_open", mrzap_pb2.VERB_KUBE),
    "FileOpen": ("file_open", mrzap_pb2.VERB_FILE_TRANSFER),
}
_VERB_OF_FIELD = dict(_ACTIONS.values())


# --- client side -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClientHandshake:
    """What the client keeps between sending its SYN and reading the answer."""

    signed_syn: bytes
    """The exact bytes of the Signed SYN sent."""

    syn: mrzap_pb2.Syn
    """The SYN itself."""

    target_key: Ed25519PublicKey = dataclasses.field(repr=False)
    """The agent key named by the grant; the answer must be signed with it."""

    kx_private: X25519PrivateKey = dataclasses.field(repr=False)
    """The client's ephemeral key-exchange key."""


@dataclasses.dataclass(frozen=True)
class EstablishedHandshake:
    """An accepted handshake: the SYN-ACK and the channel keys both sides now share."""

    synack: mrzap_pb2.SynAck
    """The agent's SYN-ACK."""

    signed_synack: bytes
    """The exact bytes of the Signed SYN-ACK."""

    keys: ChannelKeys
    """The channel keys derived from this handshake."""


def build_syn(
    *,
    session_key: Ed25519PrivateKey,
    pk_token: mrzap_pb2.PkToken,
    signed_grant: mrzap_pb2.Signed,
    channel_id: str,
    action: Action,
    clock: Clock | None = None,
) -> ClientHandshake:
    """Build and sign a SYN for the target named in the grant.

    The client reads its own grant without verifying it: the agent is the party that must trust
    it, and the client only needs the target id and the agent key it names.
    """
    try:
        grant = mrzap_pb2.Grant.FromString(signed_grant.payload)
    except DecodeError:
        raise VerificationError(Reason.MALFORMED, "grant payload does not parse") from None
    kx_private, kx_public = new_key_exchange()
    syn = mrzap_pb2.Syn(
        version=PROTOCOL_VERSION,
        channel_id=channel_id,
        target_id=grant.target_id,
        client_nonce=secrets.token_bytes(32),
        timestamp_ms=round((clock or SystemClock()).now() * 1000),
        client_kx=kx_public,
        pk_token=pk_token,
        grant=signed_grant,
    )
    field, _ = _ACTIONS[type(action).__name__]
    getattr(syn, field).CopyFrom(action)
    signed = sign(session_key, Domain.SYN, syn.SerializeToString()).SerializeToString()
    return ClientHandshake(
        signed_syn=signed,
        syn=syn,
        target_key=public_key_from_bytes(grant.target_public_key),
        kx_private=kx_private,
    )


def verify_synack(handshake: ClientHandshake, raw: bytes) -> EstablishedHandshake:
    """Check the agent's SYN-ACK answers our SYN and derive the channel keys."""
    payload = verify_signature(parse_signed(raw), handshake.target_key, Domain.SYNACK)
    try:
        synack = mrzap_pb2.SynAck.FromString(payload)
    except DecodeError:
        raise VerificationError(Reason.MALFORMED, "SYN-ACK payload does not parse") from None
    if synack.syn_hash != signed_hash(handshake.signed_syn):
        raise VerificationError(Reason.SYN_HASH_MISMATCH, "SYN-ACK answers another SYN")
    keys = derive_channel_keys(handshake.kx_private, synack.agent_kx, handshake.signed_syn, raw)
    return EstablishedHandshake(synack=synack, signed_synack=raw, keys=keys)


def verify_reject(handshake: ClientHandshake, raw: bytes) -> mrzap_pb2.Reject:
    """Check the agent's Reject answers our SYN; returns it so the reason can be shown."""
    payload = verify_signature(parse_signed(raw), handshake.target_key, Domain.REJECT)
    try:
        reject = mrzap_pb2.Reject.FromString(payload)
    except DecodeError:
        raise VerificationError(Reason.MALFORMED, "Reject payload does not parse") from None
    if reject.syn_hash != signed_hash(handshake.signed_syn):
        raise VerificationError(Reason.SYN_HASH_MISMATCH, "Reject answers another SYN")
    return reject


# --- agent side --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VerifiedSyn:
    """A SYN that passed every check, with what the agent needs to act on it."""

    signed_syn: bytes
    """The exact bytes of the Signed SYN."""

    syn: mrzap_pb2.Syn
    """The SYN."""

    grant: mrzap_pb2.Grant
    """Its verified grant."""

    identity: VerifiedIdentity
    """The user, as verified from the PK token."""

    @property
    def action(self) -> str:
        """The name of the SYN's action field (e.g. "shell_open")."""
        return self.syn.WhichOneof("action") or ""

    @property
    def session_expires_at(self) -> float:
        """When the agent must end the connection."""
        return from_timestamp(self.grant.session_expires_at)


class SynVerifier:
    """The agent's SYN checks, in the order of PROTOCOL.md section 5."""

    def __init__(
        self,
        *,
        target_id: str,
        service_keys: Mapping[str, Ed25519PublicKey],
        tokens: PkTokenVerifier,
        local_policy: AgentLocalPolicy,
        replay_cache: ReplayCache,
        revocations: RevocationList | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._target_id = target_id
        self._service_keys = service_keys
        self._tokens = tokens
        self._local_policy = local_policy
        self._replays = replay_cache
        self._revocations = revocations
        self._clock = clock or SystemClock()

    async def verify(self, raw: bytes) -> VerifiedSyn:
        """Check the exact received bytes; raise VerificationError at the first failed check."""
        envelope, syn = _parse_syn(raw)  # 1. size and form
        now = self._clock.now()
        grant = self._check_grant(syn, now)  # 2. service root
        identity = await self._check_pk_token(syn, grant)  # 3. IdP root
        self._check_syn_signature(envelope, syn, grant, now)  # 4. the client's own key
        self._replays.check_and_remember(  # 5. replay
            grant.grant_id, syn.client_nonce, from_timestamp(grant.start_by)
        )
        self._check_action(syn, grant)  # 6. action inside grant and local configuration
        return VerifiedSyn(signed_syn=raw, syn=syn, grant=grant, identity=identity)

    def _check_grant(self, syn: mrzap_pb2.Syn, now: float) -> mrzap_pb2.Grant:
        grant = verify_grant(syn.grant, self._service_keys, target_id=self._target_id, now=now)
        if now >= from_timestamp(grant.session_expires_at):
            raise VerificationError(Reason.GRANT_SESSION_EXPIRED, "grant's session has ended")
        if self._revocations is not None and self._revocations.is_revoked(grant):
            raise VerificationError(Reason.GRANT_REVOKED, "grant has been revoked")
        return grant

    async def _check_pk_token(self, syn: mrzap_pb2.Syn, grant: mrzap_pb2.Grant) -> VerifiedIdentity:
        identity = await self._tokens.verify(syn.pk_token)
        if syn.pk_token.upk != grant.upk:
            raise VerificationError(Reason.TOKEN_UPK_MISMATCH, "PK token is for another key")
        if (identity.iss, identity.sub) != (grant.subject.iss, grant.subject.sub):
            raise VerificationError(Reason.TOKEN_SUBJECT_MISMATCH, "PK token is for another user")
        return identity

    def _check_syn_signature(
        self,
        envelope: mrzap_pb2.Signed,
        syn: mrzap_pb2.Syn,
        grant: mrzap_pb2.Grant,
        now: float,
    ) -> None:
        verify_signature(
            envelope, public_key_from_bytes(grant.upk), Domain.SYN, Reason.SYN_BAD_SIGNATURE
        )
        if syn.target_id != self._target_id:
            raise VerificationError(Reason.SYN_WRONG_TARGET, "SYN is for another target")
        if abs(now - syn.timestamp_ms / 1000) > CLOCK_WINDOW_S:
            raise VerificationError(
                Reason.SYN_CLOCK_SKEW, "SYN timestamp is too far from the agent's clock"
            )

    def _check_action(self, syn: mrzap_pb2.Syn, grant: mrzap_pb2.Grant) -> None:
        field = syn.WhichOneof("action") or ""
        if _VERB_OF_FIELD[field] != grant.verb:
            raise VerificationError(
                Reason.ACTION_VERB_NOT_GRANTED,
                f"{field} needs verb {mrzap_pb2.Verb.Name(_VERB_OF_FIELD[field])}, grant has "
                f"{mrzap_pb2.Verb.Name(grant.verb)}",
            )
        action: Action = getattr(syn, field)
        if action.target_user != grant.target_user:
            raise VerificationError(
                Reason.ACTION_TARGET_USER_NOT_GRANTED, "target user is not the grant's"
            )
        if isinstance(action, mrzap_pb2.TunnelOpen):
            _check_tunnel(action, grant, self._local_policy)
        elif isinstance(action, mrzap_pb2.KubeOpen):
            if not set(action.groups) <= set(grant.kube_groups):
                raise VerificationError(
                    Reason.ACTION_TARGET_USER_NOT_GRANTED, "cluster groups are not the grant's"
                )
        elif not self._local_policy.allows_user(action.target_user):
            raise VerificationError(
                Reason.ACTION_TARGET_USER_NOT_ALLOWED,
                f"this target does not allow user {action.target_user!r}",
            )


def _check_tunnel(
    action: mrzap_pb2.TunnelOpen, grant: mrzap_pb2.Grant, local_policy: AgentLocalPolicy
) -> None:
    asked, granted = action.destination, grant.destination
    if (asked.host.lower(), asked.port) != (granted.host.lower(), granted.port):
        raise VerificationError(
            Reason.ACTION_DESTINATION_NOT_GRANTED, "destination is not the grant's"
        )
    if not local_policy.allows_destination(asked.host, asked.port):
        raise VerificationError(
            Reason.ACTION_DESTINATION_NOT_ALLOWED,
            f"this target does not allow tunnels to {asked.host}:{asked.port}",
        )
    if action.target_user and not local_policy.allows_user(action.target_user):
        raise VerificationError(
            Reason.ACTION_TARGET_USER_NOT_ALLOWED,
            f"this target does not allow user {action.target_user!r}",
        )


def _parse_syn(raw: bytes) -> tuple[mrzap_pb2.Signed, mrzap_pb2.Syn]:
    if len(raw) > MAX_SYN_BYTES:
        raise VerificationError(Reason.TOO_LARGE, f"SYN is larger than {MAX_SYN_BYTES} bytes")
    envelope = parse_signed(raw)
    try:
        syn = mrzap_pb2.Syn.FromString(envelope.payload)
    except DecodeError:
        raise VerificationError(Reason.MALFORMED, "SYN payload does not parse") from None
    if syn.version == 0:
        raise VerificationError(Reason.MALFORMED, "SYN lacks a protocol version")
    if syn.version != PROTOCOL_VERSION:
        raise VerificationError(
            Reason.UNSUPPORTED_VERSION, f"protocol version {syn.version} is not supported"
        )
    missing = [
        name
        for name, present in (
            ("channel_id", bool(syn.channel_id)),
            ("target_id", bool(syn.target_id)),
            ("action", syn.WhichOneof("action") is not None),
            ("client_nonce", len(syn.client_nonce) == _RAW_KEY_BYTES),
            ("client_kx", len(syn.client_kx) == _RAW_KEY_BYTES),
            ("pk_token", syn.HasField("pk_token")),
            ("grant", syn.HasField("grant")),
        )
        if not present
    ]
    if missing:
        raise VerificationError(Reason.MALFORMED, f"SYN lacks a valid {', '.join(missing)}")
    return envelope, syn


def accept_syn(
    verified: VerifiedSyn,
    agent_key: Ed25519PrivateKey,
    result: mrzap_pb2.ActionResult,
    clock: Clock | None = None,
) -> EstablishedHandshake:
    """Sign the SYN-ACK for a verified SYN and derive the channel keys."""
    kx_private, kx_public = new_key_exchange()
    synack = mrzap_pb2.SynAck(
        syn_hash=signed_hash(verified.signed_syn),
        agent_nonce=secrets.token_bytes(32),
        timestamp_ms=round((clock or SystemClock()).now() * 1000),
        agent_kx=kx_public,
        result=result,
    )
    raw = sign(agent_key, Domain.SYNACK, synack.SerializeToString()).SerializeToString()
    keys = derive_channel_keys(kx_private, verified.syn.client_kx, verified.signed_syn, raw)
    return EstablishedHandshake(synack=synack, signed_synack=raw, keys=keys)


def reject_syn(raw_syn: bytes, agent_key: Ed25519PrivateKey, error: VerificationError) -> bytes:
    """The signed Reject for the SYN bytes received, naming the failed check."""
    reject = mrzap_pb2.Reject(
        syn_hash=signed_hash(raw_syn), code=error.reason.to_wire(), message=error.detail
    )
    return sign(agent_key, Domain.REJECT, reject.SerializeToString()).SerializeToString()
