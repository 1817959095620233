"""How zli reads durations and shows tables, times and JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.timestamps import to_timestamp
from zli._format import (
    TARGET_STATES,
    duration_text,
    field_time,
    parse_duration,
    state_name,
    table,
    time_text,
    to_json,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("24h", 86400),
        ("30d", 30 * 86400),
        ("2w", 14 * 86400),
        ("1h30m", 5400),
        (" 1D 12H ", 129600),
    ],
)
def test_durations_are_read(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "h", "-5h", "1x", "0h", "1.5h", "1h-30m", "h1"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10 * 365 * 86400))
def test_shown_durations_read_back(seconds: int) -> None:
    assert parse_duration(duration_text(seconds)) == seconds


def test_duration_text() -> None:
    assert duration_text(86400) == "1d"
    assert duration_text(5400) == "1h30m"
    assert duration_text(0) == "-"


def test_table_aligns_columns_and_leaves_the_last_unpadded() -> None:
    text = table(("NAME", "STATE", "ID"), [("web-1", "online", "a"), ("db", "-", "bbbb")])
    assert text.splitlines() == [
        "NAME   STATE   ID",
        "web-1  online  a",
        "db     -       bbbb",
    ]


def test_times_are_utc_and_unset_ones_say_so() -> None:
    stamp = to_timestamp(1_900_000_000.25)
    assert time_text(stamp) == "2030-03-17 17:46:40"
    assert time_text(None) == "-"
    target = registry_pb.Target(create_time=stamp)
    assert field_time(target, "create_time") == "2030-03-17 17:46:40"
    assert field_time(target, "last_seen_time") == "never"


def test_every_target_state_has_a_name() -> None:
    assert list(TARGET_STATES) == ["activation", "registered", "online", "offline", "terminated"]
    assert state_name(registry_pb.TARGET_STATE_ONLINE) == "online"
    assert state_name(registry_pb.TARGET_STATE_UNSPECIFIED) == "unknown"


def test_json_uses_the_proto_field_names() -> None:
    target = registry_pb.Target(id="t1", name="web-1", state=registry_pb.TARGET_STATE_OFFLINE)
    assert json.loads(to_json([target])) == [
        {"id": "t1", "name": "web-1", "state": "TARGET_STATE_OFFLINE"}
    ]
    assert json.loads(to_json({"target": target, "commands": ["a"]}))["commands"] == ["a"]
