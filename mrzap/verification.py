"""Why a protocol check failed: one stable reason code per check of PROTOCOL.md sections 3 to 6.

`Reason` mirrors the wire enum `bastion.mrzap.v1.ReasonCode` member for member (a test proves it),
so a `Reject` sent by an agent and a `VerificationError` raised locally name the same check.
"""

from __future__ import annotations

import enum

from bastion.mrzap.v1 import mrzap_pb2

from .errors import PermissionDenied

__all__ = ["Reason", "VerificationError"]


class Reason(enum.Enum):
    """The check that failed. Values are the suffixes of the wire enum's names."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[str]) -> str:
        return name

    MALFORMED = enum.auto()
    TOO_LARGE = enum.auto()
    UNSUPPORTED_VERSION = enum.auto()
    UNKNOWN_KEY = enum.auto()
    BAD_SIGNATURE = enum.auto()
    GRANT_BAD_SIGNATURE = enum.auto()
    GRANT_UNKNOWN_KEY = enum.auto()
    GRANT_NOT_YET_VALID = enum.auto()
    GRANT_START_BY_PASSED = enum.auto()
    GRANT_WRONG_TARGET = enum.auto()
    GRANT_SESSION_EXPIRED = enum.auto()
    GRANT_REVOKED = enum.auto()
    TOKEN_MALFORMED = enum.auto()
    TOKEN_ALG_NOT_ALLOWED = enum.auto()
    TOKEN_UNKNOWN_KEY = enum.auto()
    TOKEN_BAD_SIGNATURE = enum.auto()
    TOKEN_WRONG_ISSUER = enum.auto()
    TOKEN_WRONG_AUDIENCE = enum.auto()
    TOKEN_AZP_MISMATCH = enum.auto()
    TOKEN_NONCE_MISMATCH = enum.auto()
    TOKEN_ORG_CONSTRAINT = enum.auto()
    TOKEN_EMAIL_UNVERIFIED = enum.auto()
    TOKEN_EXPIRED = enum.auto()
    TOKEN_REFRESH_MISMATCH = enum.auto()
    TOKEN_SESSION_TOO_OLD = enum.auto()
    TOKEN_JWKS_UNAVAILABLE = enum.auto()
    TOKEN_UPK_MISMATCH = enum.auto()
    TOKEN_SUBJECT_MISMATCH = enum.auto()
    TOKEN_NOT_YET_VALID = enum.auto()
    SYN_BAD_SIGNATURE = enum.auto()
    SYN_WRONG_TARGET = enum.auto()
    SYN_CLOCK_SKEW = enum.auto()
    SYN_REPLAYED = enum.auto()
    ACTION_VERB_NOT_GRANTED = enum.auto()
    ACTION_TARGET_USER_NOT_GRANTED = enum.auto()
    ACTION_DESTINATION_NOT_GRANTED = enum.auto()
    ACTION_TARGET_USER_NOT_ALLOWED = enum.auto()
    ACTION_DESTINATION_NOT_ALLOWED = enum.auto()
    SYN_HASH_MISMATCH = enum.auto()
    FRAME_OUT_OF_ORDER = enum.auto()
    FRAME_AUTH_FAILED = enum.auto()

    def to_wire(self) -> mrzap_pb2.ReasonCode.ValueType:
        """The matching `bastion.mrzap.v1.ReasonCode` value."""
        return mrzap_pb2.ReasonCode.Value(f"REASON_CODE_{self.value}")

    @classmethod
    def from_wire(cls, code: mrzap_pb2.ReasonCode.ValueType) -> Reason:
        """The reason for a wire code; unknown or unset codes read as MALFORMED."""
        try:
            return cls(mrzap_pb2.ReasonCode.Name(code).removeprefix("REASON_CODE_"))
        except ValueError:
            return cls.MALFORMED


class VerificationError(PermissionDenied):
    """A protocol check failed; `reason` says which one, `message` says why in words."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.detail = message
