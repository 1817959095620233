"""Channel keys and encrypted channel frames (PROTOCOL.md section 5 "Channel keys", section 6).

After an accepted handshake both ends hold the same two keys, derived from an ephemeral X25519
exchange bound to the exact SYN and SYN-ACK bytes:

    shared     = X25519(client_kx, agent_kx)
    transcript = SHA-256(SYN bytes || SYN-ACK bytes)
    okm        = HKDF-SHA256(shared, salt=transcript, info="mrzap/v1/channel", length=64)

The first 32 bytes of `okm` key the client→agent direction, the last 32 the agent→client one.

Every `ChannelMessage` then travels as `Frame { seq; ciphertext }` sealed with AES-256-GCM under
the key of its direction, with nonce = 12-byte big-endian `seq` and
AAD = `channel_id || direction || seq` (8-byte big-endian). Each direction starts at `seq = 0` and
must arrive strictly in order; a gap, repeat, failed tag or unparseable plaintext closes the
channel, so a `FrameOpener` refuses everything after its first failure. The broker relays frames
it can neither read nor alter, reorder or replay undetected.

A sealer and an opener each belong to one task: they keep a sequence counter and are not meant
to be shared between threads.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError

from bastion.mrzap.v1 import mrzap_pb2

from .errors import InvalidArgument, ResourceExhausted
from .verification import Reason, VerificationError

__all__ = [
    "CHANNEL_KEY_BYTES",
    "HKDF_INFO",
    "KX_PUBLIC_KEY_BYTES",
    "MAX_FRAME_DATA",
    "MAX_FRAME_PLAINTEXT",
    "MAX_SEQ",
    "TAG_BYTES",
    "ChannelKeys",
    "Direction",
    "FrameOpener",
    "FrameSealer",
    "derive_channel_keys",
    "new_key_exchange",
]

#: HKDF `info` of the channel key derivation.
HKDF_INFO = b"mrzap/v1/channel"
#: Length of each direction's AES-256-GCM key.
CHANNEL_KEY_BYTES = 32
#: Length of a raw X25519 public key.
KX_PUBLIC_KEY_BYTES = 32
#: Length of the AES-GCM authentication tag appended to every ciphertext.
TAG_BYTES = 16
#: Largest payload (stdin, stdout, tunnel data…) a sender puts into one frame; relays coalesce
#: reads into frames of 16 to 64 KiB.
MAX_FRAME_DATA = 64 * 1024
#: Largest serialized ChannelMessage accepted in a frame: MAX_FRAME_DATA plus room for the oneof
#: field's tag and length prefix.
MAX_FRAME_PLAINTEXT = MAX_FRAME_DATA + 64
#: Last sequence number a direction may use (`Frame.seq` is a uint64).
MAX_SEQ = 2**64 - 1

_MAX_CIPHERTEXT = MAX_FRAME_PLAINTEXT + TAG_BYTES
_NONCE = struct.Struct(">4xQ")  # 12-byte big-endian seq: four zero bytes, then the 64-bit seq
_SEQ = struct.Struct(">Q")


@dataclasses.dataclass(frozen=True, repr=False)
class ChannelKeys:
    """The two AES-256-GCM keys of one channel; the repr never shows them."""

    client_to_agent: bytes
    """Key of frames sent by zli to the agent (first half of the HKDF output)."""

    agent_to_client: bytes
    """Key of frames sent by the agent to zli (second half of the HKDF output)."""

    def __post_init__(self) -> None:
        if (
            len(self.client_to_agent) != CHANNEL_KEY_BYTES
            or len(self.agent_to_client) != CHANNEL_KEY_BYTES
        ):
            raise InvalidArgument(f"channel keys have {CHANNEL_KEY_BYTES} bytes each")

    def __repr__(self) -> str:
        return "ChannelKeys(<redacted>)"

    def key_for(self, direction: Direction) -> bytes:
        """The key of frames travelling in `direction`."""
        if direction is Direction.CLIENT_TO_AGENT:
            return self.client_to_agent
        return self.agent_to_client


class Direction(enum.IntEnum):
    """Which way a frame travels; its value is the one direction byte of the AAD."""

    CLIENT_TO_AGENT = 0
    AGENT_TO_CLIENT = 1


def new_key_exchange() -> tuple[X25519PrivateKey, bytes]:
    """A fresh ephemeral X25519 key and its raw 32-byte public key (SYN `client_kx`, SYN-ACK
    `agent_kx`)."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return private, public


def derive_channel_keys(
    own_kx: X25519PrivateKey, peer_kx: bytes, syn: bytes, synack: bytes
) -> ChannelKeys:
    """Derive the channel keys of PROTOCOL.md section 5.

    `syn` and `synack` are the exact serialized Signed envelopes as sent and received, so the
    keys are bound to this one handshake. Raises VerificationError(MALFORMED) if the peer's key
    is not 32 bytes or is a low-order point (the shared secret would be all zeros).
    """
    if len(peer_kx) != KX_PUBLIC_KEY_BYTES:
        raise VerificationError(
            Reason.MALFORMED,
            f"key-exchange public key has {len(peer_kx)} bytes, expected {KX_PUBLIC_KEY_BYTES}",
        )
    try:
        shared = own_kx.exchange(X25519PublicKey.from_public_bytes(peer_kx))
    except ValueError:
        # OpenSSL refuses to return the all-zero secret of a low-order point itself.
        raise VerificationError(Reason.MALFORMED, "key-exchange public key is invalid") from None
    if shared == bytes(len(shared)):
        raise VerificationError(Reason.MALFORMED, "key-exchange public key is a low-order point")
    transcript = hashlib.sha256(syn + synack).digest()
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=2 * CHANNEL_KEY_BYTES,
        salt=transcript,
        info=HKDF_INFO,
    ).derive(shared)
    return ChannelKeys(
        client_to_agent=okm[:CHANNEL_KEY_BYTES], agent_to_client=okm[CHANNEL_KEY_BYTES:]
    )


def _aad_prefix(channel_id: str, direction: Direction) -> bytes:
    # channel_id || direction; the 8-byte seq follows per frame. The AAD stays unambiguous without
    # a length prefix because the two fields after channel_id have fixed lengths.
    if not channel_id:
        raise InvalidArgument("a channel needs a channel id")
    return channel_id.encode() + bytes((Direction(direction),))


class FrameSealer:
    """Seals one direction's messages into frames numbered 0, 1, 2, … (PROTOCOL.md section 6)."""

    __slots__ = ("_aad_prefix", "_aead", "_seq")

    def __init__(self, keys: ChannelKeys, channel_id: str, direction: Direction) -> None:
        self._aead = AESGCM(keys.key_for(direction))
        self._aad_prefix = _aad_prefix(channel_id, direction)
        self._seq = 0

    @property
    def next_seq(self) -> int:
        """The sequence number the next frame will carry."""
        return self._seq

    def seal(self, message: mrzap_pb2.ChannelMessage) -> mrzap_pb2.Frame:
        """Serialize and seal `message` as the next frame."""
        return self.seal_bytes(message.SerializeToString())

    def seal_bytes(self, plaintext: bytes) -> mrzap_pb2.Frame:
        """Seal an already-serialized ChannelMessage as the next frame.

        Raises InvalidArgument if it is larger than the peer accepts (MAX_FRAME_PLAINTEXT), and
        ResourceExhausted once all 2**64 sequence numbers are used (the channel must end).
        """
        seq = self._seq
        if seq > MAX_SEQ:
            raise ResourceExhausted("channel sequence numbers are exhausted; open a new channel")
        if len(plaintext) > MAX_FRAME_PLAINTEXT:
            raise InvalidArgument(
                f"frame plaintext of {len(plaintext)} bytes exceeds {MAX_FRAME_PLAINTEXT}"
            )
        ciphertext = self._aead.encrypt(
            _NONCE.pack(seq), plaintext, self._aad_prefix + _SEQ.pack(seq)
        )
        self._seq = seq + 1
        return mrzap_pb2.Frame(seq=seq, ciphertext=ciphertext)


class FrameOpener:
    """Opens one direction's frames, strictly in order from 0 (PROTOCOL.md section 6).

    Any failure closes the opener: the protocol closes the channel, so every later call raises
    a VerificationError with the reason of the first failure.
    """

    __slots__ = ("_aad_prefix", "_aead", "_failure", "_seq")

    def __init__(self, keys: ChannelKeys, channel_id: str, direction: Direction) -> None:
        self._aead = AESGCM(keys.key_for(direction))
        self._aad_prefix = _aad_prefix(channel_id, direction)
        self._seq = 0
        self._failure: VerificationError | None = None

    @property
    def next_seq(self) -> int:
        """The sequence number the next frame must carry."""
        return self._seq

    @property
    def closed(self) -> bool:
        """Whether a failure has closed this opener."""
        return self._failure is not None

    def open(self, frame: mrzap_pb2.Frame) -> mrzap_pb2.ChannelMessage:
        """Authenticate, decrypt and parse the next frame.

        Raises VerificationError: FRAME_OUT_OF_ORDER (gap, repeat, reorder), TOO_LARGE,
        FRAME_AUTH_FAILED (tampered, truncated, wrong key, direction or channel), MALFORMED (the
        plaintext is not a ChannelMessage).
        """
        plaintext = self.open_bytes(frame)
        try:
            return mrzap_pb2.ChannelMessage.FromString(plaintext)
        except DecodeError:
            raise self._fail(Reason.MALFORMED, "frame plaintext is not a ChannelMessage") from None

    def open_bytes(self, frame: mrzap_pb2.Frame) -> bytes:
        """Authenticate and decrypt the next frame; returns the serialized ChannelMessage.

        The same checks as `open`, except that the plaintext is not parsed.
        """
        if self._failure is not None:
            raise VerificationError(
                self._failure.reason, f"channel closed after an earlier failure: {self._failure}"
            )
        seq = frame.seq
        if seq != self._seq:
            raise self._fail(
                Reason.FRAME_OUT_OF_ORDER, f"expected frame {self._seq}, got frame {seq}"
            )
        ciphertext = frame.ciphertext
        if len(ciphertext) > _MAX_CIPHERTEXT:
            raise self._fail(
                Reason.TOO_LARGE, f"frame of {len(ciphertext)} bytes exceeds {_MAX_CIPHERTEXT}"
            )
        try:
            plaintext = self._aead.decrypt(
                _NONCE.pack(seq), ciphertext, self._aad_prefix + _SEQ.pack(seq)
            )
        except InvalidTag:
            raise self._fail(
                Reason.FRAME_AUTH_FAILED, f"frame {seq} does not authenticate"
            ) from None
        self._seq = seq + 1
        return plaintext

    def _fail(self, reason: Reason, message: str) -> VerificationError:
        self._failure = VerificationError(reason, message)
        return self._failure
