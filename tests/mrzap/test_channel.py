"""Channel keys and frames (PROTOCOL.md section 5 "Channel keys" and section 6).

Keys come from real X25519 exchanges and real AES-256-GCM; every rejection of section 6 (gap,
repeat, reorder, failed tag, other direction, other channel) is checked with its reason code, and
a property test flips every byte of a serialized frame.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.channel import (
    MAX_FRAME_PLAINTEXT,
    MAX_SEQ,
    TAG_BYTES,
    ChannelKeys,
    Direction,
    FrameOpener,
    FrameSealer,
    derive_channel_keys,
    new_key_exchange,
)
from mrzap.envelope import Domain, sign
from mrzap.errors import InvalidArgument, ResourceExhausted
from mrzap.verification import Reason, VerificationError

CHANNEL = "channel-1"
C2A = Direction.CLIENT_TO_AGENT
A2C = Direction.AGENT_TO_CLIENT


def signed_bytes(domain: Domain, payload: bytes) -> bytes:
    """A real serialized Signed envelope, as the handshake transcript holds."""
    return sign(keys.generate_signing_key(), domain, payload).SerializeToString()


def handshake_keys(
    syn: bytes | None = None, synack: bytes | None = None
) -> tuple[ChannelKeys, ChannelKeys]:
    """Both ends' keys after one X25519 exchange over the given (or fresh) transcript."""
    syn = syn if syn is not None else signed_bytes(Domain.SYN, b"syn")
    synack = synack if synack is not None else signed_bytes(Domain.SYNACK, b"synack")
    client_kx, client_public = new_key_exchange()
    agent_kx, agent_public = new_key_exchange()
    client = derive_channel_keys(client_kx, agent_public, syn, synack)
    agent = derive_channel_keys(agent_kx, client_public, syn, synack)
    return client, agent


KEYS, _ = handshake_keys()


def pair(
    direction: Direction = C2A, channel_id: str = CHANNEL, keys: ChannelKeys = KEYS
) -> tuple[FrameSealer, FrameOpener]:
    return FrameSealer(keys, channel_id, direction), FrameOpener(keys, channel_id, direction)


def msg(n: int) -> mrzap_pb2.ChannelMessage:
    return mrzap_pb2.ChannelMessage(data=f"message {n}".encode())


def reason_of(opener: FrameOpener, frame: mrzap_pb2.Frame) -> Reason:
    with pytest.raises(VerificationError) as caught:
        opener.open(frame)
    return caught.value.reason


# --- keys ---------------------------------------------------------------------------------------


def test_both_ends_derive_the_same_keys() -> None:
    client, agent = handshake_keys()
    assert client == agent
    assert len(client.client_to_agent) == len(client.agent_to_client) == 32
    assert client.client_to_agent != client.agent_to_client


def test_keys_are_bound_to_the_transcript() -> None:
    syn = signed_bytes(Domain.SYN, b"syn")
    synack = signed_bytes(Domain.SYNACK, b"synack")
    client_kx, client_public = new_key_exchange()
    agent_kx, agent_public = new_key_exchange()
    base = derive_channel_keys(client_kx, agent_public, syn, synack)
    other_syn = derive_channel_keys(
        client_kx, agent_public, signed_bytes(Domain.SYN, b"syn"), synack
    )
    other_synack = derive_channel_keys(
        client_kx, agent_public, syn, signed_bytes(Domain.SYNACK, b"synack")
    )
    assert len({base.client_to_agent, other_syn.client_to_agent, other_synack.client_to_agent}) == 3
    assert derive_channel_keys(agent_kx, client_public, syn, synack) == base


def test_keys_are_bound_to_the_exchange() -> None:
    assert handshake_keys(b"syn", b"synack")[0] != handshake_keys(b"syn", b"synack")[0]


def test_repr_never_shows_the_keys() -> None:
    text = repr(KEYS) + str(KEYS)
    for key in (KEYS.client_to_agent, KEYS.agent_to_client):
        assert key.hex() not in text
        assert repr(key) not in text


def test_channel_keys_must_have_32_bytes() -> None:
    with pytest.raises(InvalidArgument):
        ChannelKeys(client_to_agent=bytes(31), agent_to_client=bytes(32))


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_peer_key_of_wrong_length_is_malformed(length: int) -> None:
    with pytest.raises(VerificationError) as caught:
        derive_channel_keys(X25519PrivateKey.generate(), bytes(range(length)), b"s", b"a")
    assert caught.value.reason is Reason.MALFORMED


@pytest.mark.parametrize(
    "peer", [bytes(32), b"\x01" + bytes(31)], ids=["zero-point", "order-1-point"]
)
def test_low_order_peer_key_is_malformed(peer: bytes) -> None:
    with pytest.raises(VerificationError) as caught:
        derive_channel_keys(X25519PrivateKey.generate(), peer, b"s", b"a")
    assert caught.value.reason is Reason.MALFORMED


# --- frames: the good path ------------------------------------------------------------------------

EVERY_KIND = [
    mrzap_pb2.ChannelMessage(stdin=b"ls -l\n"),
    mrzap_pb2.ChannelMessage(stdout=b"\x1b[1mtotal 0\x1b[0m\r\n"),
    mrzap_pb2.ChannelMessage(stderr=b"oops\n"),
    mrzap_pb2.ChannelMessage(data=bytes(range(256)) * 4),
    mrzap_pb2.ChannelMessage(resize=mrzap_pb2.Resize(cols=132, rows=43)),
    mrzap_pb2.ChannelMessage(window_update=mrzap_pb2.WindowUpdate(bytes=256 * 1024)),
    mrzap_pb2.ChannelMessage(exit=mrzap_pb2.Exit(code=3, signal=0)),
    mrzap_pb2.ChannelMessage(close=mrzap_pb2.Close(reason="user logged out")),
    mrzap_pb2.ChannelMessage(
        error=mrzap_pb2.ChannelError(
            code=Reason.FRAME_AUTH_FAILED.to_wire(), message="frame does not authenticate"
        )
    ),
    mrzap_pb2.ChannelMessage(end_of_input=mrzap_pb2.EndOfInput()),
    mrzap_pb2.ChannelMessage(data=b""),
]


def test_every_kind_is_covered() -> None:
    oneof = mrzap_pb2.ChannelMessage.DESCRIPTOR.oneofs_by_name["message"]
    assert {m.WhichOneof("message") for m in EVERY_KIND} == {f.name for f in oneof.fields}


@pytest.mark.parametrize("direction", list(Direction))
def test_every_message_kind_round_trips_in_order(direction: Direction) -> None:
    client, agent = handshake_keys()
    sender_keys, receiver_keys = (client, agent) if direction is C2A else (agent, client)
    sealer = FrameSealer(sender_keys, CHANNEL, direction)
    opener = FrameOpener(receiver_keys, CHANNEL, direction)
    for seq, message in enumerate(EVERY_KIND):
        frame = sealer.seal(message)
        assert frame.seq == seq
        # Across the relay the frame travels serialized.
        assert opener.open(mrzap_pb2.Frame.FromString(frame.SerializeToString())) == message
    assert sealer.next_seq == opener.next_seq == len(EVERY_KIND)


def test_bytes_fast_paths_match_the_message_paths() -> None:
    sealer, opener = pair()
    raw = mrzap_pb2.ChannelMessage(stdout=b"x" * 32768).SerializeToString()
    assert opener.open_bytes(sealer.seal_bytes(raw)) == raw
    assert opener.open(sealer.seal_bytes(raw)).stdout == b"x" * 32768


def test_largest_frame_passes() -> None:
    sealer, opener = pair()
    plaintext = mrzap_pb2.ChannelMessage(data=b"d" * (64 * 1024)).SerializeToString()
    assert len(plaintext) <= MAX_FRAME_PLAINTEXT
    assert opener.open_bytes(sealer.seal_bytes(plaintext)) == plaintext


def test_frame_layout_is_the_protocols() -> None:
    """Nonce = 12-byte big-endian seq, AAD = channel_id || direction || 8-byte seq (section 6)."""
    sealer, _ = pair(A2C)
    sealer.seal(msg(0))
    frame = sealer.seal(msg(1))
    aad = CHANNEL.encode() + b"\x01" + (1).to_bytes(8, "big")
    plaintext = AESGCM(KEYS.agent_to_client).decrypt((1).to_bytes(12, "big"), frame.ciphertext, aad)
    assert plaintext == msg(1).SerializeToString()


# --- frames: rejections -------------------------------------------------------------------------


def test_reordered_frame_is_out_of_order() -> None:
    sealer, opener = pair()
    sealer.seal(msg(0))
    second = sealer.seal(msg(1))
    assert reason_of(opener, second) is Reason.FRAME_OUT_OF_ORDER


def test_repeated_frame_is_out_of_order() -> None:
    sealer, opener = pair()
    first = sealer.seal(msg(0))
    opener.open(first)
    assert reason_of(opener, first) is Reason.FRAME_OUT_OF_ORDER


def test_skipped_frame_is_out_of_order() -> None:
    sealer, opener = pair()
    opener.open(sealer.seal(msg(0)))
    sealer.seal(msg(1))  # dropped by the relay
    assert reason_of(opener, sealer.seal(msg(2))) is Reason.FRAME_OUT_OF_ORDER


def test_tampered_ciphertext_fails_authentication() -> None:
    sealer, opener = pair()
    frame = sealer.seal(msg(0))
    tampered = bytearray(frame.ciphertext)
    tampered[0] ^= 0x01
    assert reason_of(opener, mrzap_pb2.Frame(seq=0, ciphertext=bytes(tampered))) is (
        Reason.FRAME_AUTH_FAILED
    )


@pytest.mark.parametrize("keep", [0, 1, TAG_BYTES - 1, TAG_BYTES, -1])
def test_truncated_ciphertext_fails_authentication(keep: int) -> None:
    sealer, opener = pair()
    frame = sealer.seal(msg(0))
    truncated = mrzap_pb2.Frame(seq=0, ciphertext=frame.ciphertext[:keep])
    assert reason_of(opener, truncated) is Reason.FRAME_AUTH_FAILED


def test_tampered_seq_is_out_of_order() -> None:
    sealer, opener = pair()
    frame = sealer.seal(msg(0))
    assert reason_of(opener, mrzap_pb2.Frame(seq=1, ciphertext=frame.ciphertext)) is (
        Reason.FRAME_OUT_OF_ORDER
    )


def test_ciphertext_under_another_seq_fails_authentication() -> None:
    """The relay relabels frame 1's ciphertext as the expected frame 0: the nonce and AAD differ."""
    sealer, opener = pair()
    sealer.seal(msg(0))
    second = sealer.seal(msg(1))
    relabelled = mrzap_pb2.Frame(seq=0, ciphertext=second.ciphertext)
    assert reason_of(opener, relabelled) is Reason.FRAME_AUTH_FAILED


def test_frame_from_the_other_direction_fails_authentication() -> None:
    """A client→agent frame reflected back to the client as if the agent sent it."""
    sealer = FrameSealer(KEYS, CHANNEL, C2A)
    opener = FrameOpener(KEYS, CHANNEL, A2C)
    assert reason_of(opener, sealer.seal(msg(0))) is Reason.FRAME_AUTH_FAILED


def test_direction_byte_is_authenticated_even_under_one_key() -> None:
    same = ChannelKeys(client_to_agent=bytes(range(32)), agent_to_client=bytes(range(32)))
    sealer = FrameSealer(same, CHANNEL, C2A)
    opener = FrameOpener(same, CHANNEL, A2C)
    assert reason_of(opener, sealer.seal(msg(0))) is Reason.FRAME_AUTH_FAILED


def test_frame_of_another_channel_fails_authentication() -> None:
    sealer = FrameSealer(KEYS, "channel-2", C2A)
    opener = FrameOpener(KEYS, CHANNEL, C2A)
    assert reason_of(opener, sealer.seal(msg(0))) is Reason.FRAME_AUTH_FAILED


def test_frame_under_another_key_fails_authentication() -> None:
    other, _ = handshake_keys()
    sealer = FrameSealer(other, CHANNEL, C2A)
    opener = FrameOpener(KEYS, CHANNEL, C2A)
    assert reason_of(opener, sealer.seal(msg(0))) is Reason.FRAME_AUTH_FAILED


def test_plaintext_that_is_not_a_channel_message_is_malformed() -> None:
    sealer, opener = pair()
    assert reason_of(opener, sealer.seal_bytes(b"\x07")) is Reason.MALFORMED
    assert opener.closed


def test_oversized_frame_is_too_large() -> None:
    _, opener = pair()
    huge = mrzap_pb2.Frame(seq=0, ciphertext=bytes(MAX_FRAME_PLAINTEXT + TAG_BYTES + 1))
    assert reason_of(opener, huge) is Reason.TOO_LARGE


def test_sealer_refuses_a_plaintext_the_peer_would_reject() -> None:
    sealer, _ = pair()
    with pytest.raises(InvalidArgument):
        sealer.seal_bytes(bytes(MAX_FRAME_PLAINTEXT + 1))
    assert sealer.next_seq == 0


def test_sequence_numbers_end_at_2_64_minus_1() -> None:
    sealer, opener = pair()
    # Sending 2**64 frames is out of reach for a test: start both ends near the end.
    sealer._seq = opener._seq = MAX_SEQ
    last = sealer.seal(msg(0))
    assert last.seq == MAX_SEQ
    assert opener.open(last) == msg(0)
    with pytest.raises(ResourceExhausted):
        sealer.seal(msg(1))
    assert reason_of(opener, mrzap_pb2.Frame(seq=0, ciphertext=last.ciphertext)) is (
        Reason.FRAME_OUT_OF_ORDER
    )


def test_channel_needs_an_id() -> None:
    with pytest.raises(InvalidArgument):
        FrameSealer(KEYS, "", C2A)


FAILURES: dict[str, Callable[[FrameSealer], mrzap_pb2.Frame]] = {
    "gap": lambda s: (s.seal(msg(0)), s.seal(msg(1)))[1],
    "auth": lambda s: mrzap_pb2.Frame(seq=0, ciphertext=s.seal(msg(0)).ciphertext[:-1]),
    "malformed": lambda s: s.seal_bytes(b"\x07"),
}


@pytest.mark.parametrize("failure", FAILURES)
def test_opener_stays_closed_after_a_failure(failure: str) -> None:
    sealer, opener = pair()
    reference_sealer, _ = pair()
    first = reason_of(opener, FAILURES[failure](sealer))
    assert opener.closed
    # Even the genuine frames that would come next are refused from now on.
    for n in range(3):
        genuine = reference_sealer.seal(msg(n))
        assert reason_of(opener, genuine) is first
        with pytest.raises(VerificationError):
            opener.open_bytes(genuine)


# --- property: any single-byte change of a serialized frame is rejected --------------------------

# Frame 130 has a two-byte seq varint; the frames before it bring a fresh opener up to it.
_PROPERTY_SEQ = 130
_property_sealer = FrameSealer(KEYS, CHANNEL, C2A)
_PRECEDING = [_property_sealer.seal(msg(n)) for n in range(_PROPERTY_SEQ)]
_TARGET = _property_sealer.seal(mrzap_pb2.ChannelMessage(stdout=b"secret output"))
_TARGET_BYTES = _TARGET.SerializeToString()


def rejection(opener: FrameOpener, raw: bytes) -> str | None:
    """Why the receiving end refuses relayed frame bytes, or None if it accepts them.

    Bytes that do not even parse as a Frame are refused before the opener sees them.
    """
    try:
        frame = mrzap_pb2.Frame.FromString(raw)
    except DecodeError:
        return "unparseable"
    try:
        opener.open(frame)
    except VerificationError as error:
        return error.reason.value
    return None


def ready_opener() -> FrameOpener:
    opener = FrameOpener(KEYS, CHANNEL, C2A)
    for frame in _PRECEDING:
        opener.open(frame)
    return opener


def test_unmodified_serialized_frame_opens() -> None:
    assert rejection(ready_opener(), _TARGET_BYTES) is None


@settings(max_examples=200, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(_TARGET_BYTES) - 1),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_change_is_rejected(position: int, flip: int) -> None:
    mutated = bytearray(_TARGET_BYTES)
    mutated[position] ^= flip
    opener = ready_opener()
    assert rejection(opener, bytes(mutated)) in {
        "unparseable",
        Reason.FRAME_OUT_OF_ORDER.value,
        Reason.FRAME_AUTH_FAILED.value,
        Reason.TOO_LARGE.value,
    }, f"byte {position} ^ {flip:#04x} was accepted"
