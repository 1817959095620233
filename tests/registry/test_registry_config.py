"""The `[registry]` section of the `mrzapd` configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrzap.errors import InvalidArgument
from mrzapd._config import ServiceConfig
from registry import RegistryConfig

IDP = {"issuer": "https://idp.example.com", "client_id": "zli"}


def test_defaults_apply_without_a_registry_section(tmp_path: Path) -> None:
    config = ServiceConfig.from_dict({"idp": IDP}, tmp_path)
    assert config.registry == RegistryConfig()
    assert (
        config.registry.activation_token_lifetime_s,
        config.registry.offline_timeout_s,
        config.registry.offline_cleanup_timeout_s,
        config.registry.sweep_interval_s,
    ) == (600, 60, 86400, 5)


def test_durations_are_read(tmp_path: Path) -> None:
    section = {
        "activation_token_lifetime": "15m",
        "offline_timeout": "90s",
        "offline_cleanup_timeout": "7d",
        "sweep_interval": 2,
    }
    config = ServiceConfig.from_dict({"idp": IDP, "registry": section}, tmp_path)
    assert config.registry == RegistryConfig(900, 90, 7 * 86400, 2)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"offline_timout": "60s"}, r"unknown keys in \[registry\]: \['offline_timout'\]"),
        ({"offline_timeout": "soon"}, "registry.offline_timeout must be a positive duration"),
        ({"sweep_interval": 0}, "registry.sweep_interval must be a positive duration"),
        ({"activation_token_lifetime": True}, "registry.activation_token_lifetime"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(
    tmp_path: Path, section: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ServiceConfig.from_dict({"idp": IDP, "registry": section}, tmp_path)


def test_a_registry_config_refuses_non_positive_values() -> None:
    with pytest.raises(InvalidArgument, match="offline_timeout_s must be positive"):
        RegistryConfig(offline_timeout_s=0)
