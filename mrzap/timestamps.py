"""Conversions between protobuf Timestamps and float seconds since the Unix epoch."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["from_timestamp", "to_timestamp"]


def to_timestamp(seconds: float) -> Timestamp:
    """A Timestamp for `seconds` since the epoch, exact to the microsecond."""
    stamp = Timestamp()
    stamp.FromMicroseconds(round(seconds * 1_000_000))
    return stamp


def from_timestamp(stamp: Timestamp) -> float:
    """Seconds since the epoch of `stamp`."""
    return stamp.seconds + stamp.nanos / 1e9
