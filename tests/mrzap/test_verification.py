"""The local reason codes and the wire enum name the same checks."""

from __future__ import annotations

from bastion.mrzap.v1 import mrzap_pb2
from mrzap.verification import Reason


def test_reason_mirrors_the_wire_enum() -> None:
    names = mrzap_pb2.ReasonCode.keys()
    wire = {name.removeprefix("REASON_CODE_") for name in names}
    wire.discard("UNSPECIFIED")
    assert wire == {reason.value for reason in Reason}


def test_reason_round_trips() -> None:
    for reason in Reason:
        assert Reason.from_wire(reason.to_wire()) is reason


def test_unknown_wire_code_reads_as_malformed() -> None:
    assert Reason.from_wire(mrzap_pb2.REASON_CODE_UNSPECIFIED) is Reason.MALFORMED
    assert Reason.from_wire(9999) is Reason.MALFORMED  # type: ignore[arg-type]
