"""The broker's settings: `[broker]` in mrzapd.toml, BrokerConfig, and the stable broker id."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from broker import BrokerConfig, load_or_create_broker_id
from mrzap.errors import InvalidArgument
from mrzapd._config import BrokerSettings, ServiceConfig

IDP = {"issuer": "https://idp.example.com", "client_id": "zli"}


def test_broker_section_is_parsed_with_defaults(tmp_path: Path) -> None:
    default = ServiceConfig.from_dict({"idp": IDP}, tmp_path)
    assert default.broker == BrokerSettings(region="", keepalive_interval_s=20.0)
    custom = ServiceConfig.from_dict(
        {"idp": IDP, "broker": {"region": "eu-west", "keepalive_interval": "500s"}},
        tmp_path,
    )
    assert custom.broker == BrokerSettings(region="eu-west", keepalive_interval_s=500.0)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"keepalive_interval": "soon"}, "broker.keepalive_interval must be a positive duration"),
        ({"region": 3}, "broker.region must be a string"),
        ({"regoin": "x"}, "unknown keys in [broker]: ['regoin']"),
    ],
)
def test_bad_broker_section_is_refused(
    tmp_path: Path, table: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        ServiceConfig.from_dict({"idp": IDP, "broker": table}, tmp_path)
    assert message in refused.value.message


def test_broker_config_is_validated() -> None:
    with pytest.raises(InvalidArgument, match="broker_id"):
        BrokerConfig(broker_id="")
    with pytest.raises(InvalidArgument, match="keepalive_interval_s"):
        BrokerConfig(broker_id="b", keepalive_interval_s=0)
    assert BrokerConfig(broker_id="b", keepalive_interval_s=2).silence_limit_s == 6


def test_broker_id_is_stable_per_data_directory(tmp_path: Path) -> None:
    first = load_or_create_broker_id(tmp_path / "broker-id")
    assert uuid.UUID(first)
    assert load_or_create_broker_id(tmp_path / "broker-id") == first
    assert load_or_create_broker_id(tmp_path / "other" / "broker-id") != first
    (tmp_path / "broker-id").write_text("not a uuid")
    with pytest.raises(InvalidArgument, match="does not hold a broker id"):
        load_or_create_broker_id(tmp_path / "broker-id")
