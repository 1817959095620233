"""The error hierarchy maps to gRPC status codes and back without loss."""

from __future__ import annotations

import grpc
import pytest

from mrzap import errors
from mrzap.verification import Reason, VerificationError

ERROR_CLASSES = [
    errors.InvalidArgument,
    errors.NotFound,
    errors.AlreadyExists,
    errors.PermissionDenied,
    errors.Unauthenticated,
    errors.FailedPrecondition,
    errors.ResourceExhausted,
    errors.Unavailable,
    errors.DeadlineExceeded,
    errors.Unimplemented,
    errors.Internal,
]


@pytest.mark.parametrize("cls", ERROR_CLASSES)
def test_round_trip_through_status(cls: type[errors.MrzapError]) -> None:
    code, details = errors.to_status(cls("target web-1 is offline"))
    back = errors.from_status(code, details)
    assert type(back) is cls
    assert back.message == "target web-1 is offline"


def test_every_class_has_its_own_code() -> None:
    codes = [cls.status_code for cls in ERROR_CLASSES]
    assert len(set(codes)) == len(codes)
    assert grpc.StatusCode.OK not in codes


def test_unmapped_code_keeps_the_code() -> None:
    error = errors.from_status(grpc.StatusCode.DATA_LOSS, None)
    assert type(error) is errors.MrzapError
    assert error.status_code is grpc.StatusCode.DATA_LOSS
    assert error.message == "data loss"


def test_verification_error_is_permission_denied() -> None:
    error = VerificationError(Reason.SYN_REPLAYED, "seen before")
    assert errors.to_status(error) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "SYN_REPLAYED: seen before",
    )
