"""Conversions between protobuf Timestamps and Durations and float seconds."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["from_duration", "from_timestamp", "to_duration", "to_timestamp"]


def to_timestamp(seconds: float) -> Timestamp:
    """A Timestamp for `seconds` since the epoch, exact to the microsecond."""
    stamp = Timestamp()
    stamp.FromMicroseconds(round(seconds * 1_000_000))
    return stamp


def from_timestamp(stamp: Timestamp) -> float:
    """Seconds since the epoch of `stamp`."""
    return stamp.seconds + stamp.nanos / 1e9


def to_duration(seconds: float) -> Duration:
    """A Duration of `seconds`, exact to the microsecond."""
    duration = Duration()
    duration.FromMicroseconds(round(seconds * 1_000_000))
    return duration


def from_duration(duration: Duration) -> float:
    """The seconds of `duration`."""
    return duration.seconds + duration.nanos / 1e9
