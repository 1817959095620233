"""The parts of zli's channel client that stand alone: escape sequences, flow-control accounting,
the USER@TARGET argument and the messages a failed call turns into."""

from __future__ import annotations

import asyncio
import getpass

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.mrzap.v1 import mrzap_pb2
from mrzap.errors import Aborted, InvalidArgument, PermissionDenied, Unavailable
from mrzap.verification import Reason
from zli._channel import ChannelRequest, channel_error, open_error, reject_error
from zli._connect import split_destination
from zli._escape import Escape, EscapeScanner
from zli._flow import ReceiveWindow, SendCredit
from zli._session import exit_status

REQUEST = ChannelRequest(
    "0f6e4a8e-0000-4000-8000-000000000001",
    "web-1",
    mrzap_pb2.VERB_SHELL,
    "alice",
    mrzap_pb2.ShellOpen(target_user="alice"),
)


def scan(*reads: bytes) -> list[bytes | Escape]:
    """Everything the scanner makes of `reads`, with adjacent bytes joined."""
    scanner, parts = EscapeScanner(), list[bytes | Escape]()
    for data in reads:
        for part in scanner.feed(data):
            if parts and isinstance(part, bytes) and isinstance(parts[-1], bytes):
                parts[-1] += part
            else:
                parts.append(part)
    return parts


# --- escapes -----------------------------------------------------------------------------------


def test_tilde_dot_at_the_start_detaches() -> None:
    assert scan(b"~.") == [Escape.DETACH]


def test_tilde_dot_after_a_newline_detaches_and_what_came_before_is_sent() -> None:
    assert scan(b"ls\r~.") == [b"ls\r", Escape.DETACH]
    assert scan(b"ls\n", b"~", b".") == [b"ls\n", Escape.DETACH]


def test_tilde_in_the_middle_of_a_line_is_just_a_tilde() -> None:
    assert scan(b"cd ~.") == [b"cd ~."]
    assert scan(b"echo a~.b") == [b"echo a~.b"]


def test_double_tilde_sends_one() -> None:
    assert scan(b"~~.") == [b"~."]


def test_tilde_before_another_byte_sends_both() -> None:
    assert scan(b"~/bin\r") == [b"~/bin\r"]


def test_help_then_detach_without_a_newline_between() -> None:
    assert scan(b"\r~?~.") == [b"\r", Escape.HELP, Escape.DETACH]


@given(st.binary())
def test_bytes_without_a_tilde_pass_unchanged(data: bytes) -> None:
    data = data.replace(b"~", b"")
    assert b"".join(p for p in EscapeScanner().feed(data) if isinstance(p, bytes)) == data


@given(st.lists(st.binary(max_size=20), max_size=10))
def test_reads_split_anywhere_give_the_same_result(reads: list[bytes]) -> None:
    whole = b"".join(reads)
    assert scan(*reads) == scan(whole)


# --- flow control ------------------------------------------------------------------------------


def test_send_credit_is_spent_and_granted() -> None:
    credit = SendCredit(10)
    credit.spend(10)
    assert credit.available == 0
    with pytest.raises(ValueError, match="credit of 0"):
        credit.spend(1)
    credit.grant(4)
    assert credit.available == 4


@pytest.mark.asyncio
async def test_waiting_for_credit_ends_when_the_agent_grants_some() -> None:
    credit = SendCredit(1)
    credit.spend(1)
    waiting = asyncio.ensure_future(credit.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    credit.grant(5)
    assert await waiting == 5


def test_the_receive_window_grants_back_half_a_window_at_a_time() -> None:
    window = ReceiveWindow(100)
    window.received(100)
    assert window.consumed(30) == 0
    assert window.consumed(20) == 50  # half the window written out: grant it back
    window.received(50)
    with pytest.raises(ValueError, match="more output than its credit"):
        window.received(1)


def test_output_beyond_the_credit_is_refused() -> None:
    window = ReceiveWindow(100)
    with pytest.raises(ValueError, match="more output than its credit"):
        window.received(101)


# --- arguments and endings ---------------------------------------------------------------------


def test_user_at_target() -> None:
    assert split_destination("alice@web-1") == ("alice", "web-1")
    assert split_destination("web-1") == (getpass.getuser(), "web-1")
    for bad in ("@web-1", "alice@", ""):
        with pytest.raises(InvalidArgument, match="is not"):
            split_destination(bad)


def test_exit_status_of_a_signal_is_128_plus_it() -> None:
    assert exit_status(mrzap_pb2.Exit(code=3)) == 3
    assert exit_status(mrzap_pb2.Exit(signal=9)) == 137


def test_a_policy_denial_carries_the_policy_reasons() -> None:
    error = open_error(
        grpc.StatusCode.PERMISSION_DENIED, "no policy allows alice on web-1", REQUEST
    )
    assert isinstance(error, PermissionDenied)
    assert error.message == "access to alice@web-1 denied: no policy allows alice on web-1"


def test_an_unconnected_agent_reads_as_an_offline_target() -> None:
    details = "target 0f6e4a8e is offline: its agent is not connected"
    error = open_error(grpc.StatusCode.UNAVAILABLE, details, REQUEST)
    assert isinstance(error, Unavailable)
    assert error.message == "target web-1 is offline"
    unreachable = open_error(
        grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", REQUEST
    )
    assert unreachable.message == "failed to connect to all addresses"


def test_an_aborted_channel_says_closed_or_revoked() -> None:
    error = channel_error(grpc.StatusCode.ABORTED, "grant revoked", REQUEST)
    assert isinstance(error, Aborted)
    assert error.message == "the connection was closed or your access was revoked"


def test_a_lost_agent_is_named() -> None:
    error = channel_error(
        grpc.StatusCode.UNAVAILABLE, "the broker lost the target's agent", REQUEST
    )
    assert (
        error.message == "lost the connection to target web-1: the broker lost the target's agent"
    )


def test_a_reject_names_the_agents_reason_code() -> None:
    reject = mrzap_pb2.Reject(
        code=Reason.ACTION_TARGET_USER_NOT_ALLOWED.to_wire(),
        message="this target does not allow user 'alice'",
    )
    assert reject_error(reject, REQUEST).message == (
        "target web-1 refused alice@web-1: ACTION_TARGET_USER_NOT_ALLOWED: "
        "this target does not allow user 'alice'"
    )
