"""One error hierarchy for the whole project, each error with its gRPC status code.

Servicers raise these; `to_status` turns one into the (code, message) pair a gRPC call ends with,
and `from_status` (or `from_rpc_error`, for a failed grpcio call) turns it back into the matching
error on the client, so zli can print a clear message and pick an exit code without knowing gRPC.
"""

from __future__ import annotations

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "MrzapError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
    "from_status",
    "to_status",
]


class MrzapError(Exception):
    """Base of every error the project raises on purpose."""

    status_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MrzapError):
    """The request is malformed or a value is out of range."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MrzapError):
    """The named object does not exist (or the caller may not know that it does)."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MrzapError):
    """An object with that name or id exists already."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(MrzapError):
    """The caller is known but not allowed to do this."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(MrzapError):
    """The caller could not be identified, or its credentials have expired."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(MrzapError):
    """The system is not in a state that allows the request (e.g. target offline)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(MrzapError):
    """A limit was reached (rate limit, lock-out, quota)."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(MrzapError):
    """A dependency cannot be reached right now; retrying later may work."""

    status_code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(MrzapError):
    """The service does not offer this operation (yet)."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(MrzapError):
    """The operation did not finish in time."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Aborted(MrzapError):
    """The operation was cut short on purpose, e.g. a channel whose connection was closed."""

    status_code = grpc.StatusCode.ABORTED


class Internal(MrzapError):
    """A bug or an unexpected state; the message never carries secrets."""

    status_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[MrzapError]] = {
    cls.status_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unimplemented,
        Aborted,
        Internal,
    )
}


def to_status(error: MrzapError) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and details a call raising `error` ends with."""
    return error.status_code, error.message


def from_status(code: grpc.StatusCode, details: str | None) -> MrzapError:
    """The project error for a call that ended with `code` (MrzapError if no class has it)."""
    error = _BY_CODE.get(code, MrzapError)(details or code.name.lower().replace("_", " "))
    if type(error) is MrzapError:
        error.status_code = code
    return error


def from_rpc_error(error: grpc.RpcError) -> MrzapError:
    """`from_status` for a failed call as grpcio raises it."""
    # Failed calls are both RpcError and Call at run time, which the type stubs cannot express.
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if callable(code) and callable(details):
        return from_status(code(), details())
    return from_status(grpc.StatusCode.UNKNOWN, str(error))
