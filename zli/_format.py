"""How zli shows things: aligned tables, times, durations, and JSON for scripts."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import ParamSpec, TypeVar

import click
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from bastion.registry.v1 import registry_service_pb2 as registry_pb

__all__ = [
    "TARGET_STATES",
    "duration_message",
    "duration_option",
    "duration_text",
    "field_time",
    "json_option",
    "parse_duration",
    "state_name",
    "table",
    "time_text",
    "to_json",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"(?:\d+[smhdw])+")

#: Target states by the lowercase name zli shows and accepts.
TARGET_STATES: dict[str, registry_pb.TargetState.ValueType] = {
    name.removeprefix("TARGET_STATE_").lower(): value
    for name, value in registry_pb.TargetState.items()
    if value != registry_pb.TARGET_STATE_UNSPECIFIED
}


def parse_duration(text: str) -> int:
    """Seconds in a duration like "90s", "15m", "24h", "30d", "2w" or "1h30m"."""
    compact = text.strip().lower().replace(" ", "")
    if not _WHOLE.fullmatch(compact):
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 24h, 30d or 1h30m")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(compact))
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def duration_option(
    *names: str, help: str, default: str | None = None
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """A click option holding a duration ("24h", "30d"...), given to the command in seconds."""

    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as error:
            raise click.BadParameter(str(error), ctx, param) from None

    return click.option(*names, metavar="DURATION", default=default, callback=convert, help=help)


def duration_text(seconds: float) -> str:
    """A duration the way zli accepts it: "24h", "30d", "1h30m"; "-" for none."""
    remaining = round(seconds)
    if remaining <= 0:
        return "-"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def time_text(stamp: Timestamp | None) -> str:
    """A time as "YYYY-MM-DD HH:MM:SS" UTC; "-" when unset."""
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return "-"
    return stamp.ToDatetime(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def field_time(message: Message, field: str, unset: str = "never") -> str:
    """A Timestamp field of `message` as `time_text` shows it; `unset` if it is not set."""
    if not message.HasField(field):
        return unset
    stamp = getattr(message, field)
    assert isinstance(stamp, Timestamp)
    return time_text(stamp)


def state_name(state: int) -> str:
    """A target state as zli shows it: "online", "offline"..."""
    for name, value in TARGET_STATES.items():
        if value == state:
            return name
    return "unknown"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Rows under their headers in aligned columns (the last column is not padded)."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(line, widths, strict=False)), line[-1]]
        ).rstrip()
        for line in lines
    )


def to_json(value: Message | Sequence[Message] | dict[str, object]) -> str:
    """Messages (or a dict holding messages) as indented JSON with the proto field names."""
    return json.dumps(_plain(value), indent=2, sort_keys=True)


def _plain(value: object) -> object:
    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def duration_message(seconds: int) -> Duration:
    """A protobuf Duration of whole seconds."""
    return Duration(seconds=seconds)


#: The `--json` flag of commands whose output scripts read.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
