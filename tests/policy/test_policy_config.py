"""The `[policy]` section of the service configuration and `--policy-engine`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mrzap.errors import InvalidArgument
from mrzapd._config import PolicySettings, ServiceConfig
from mrzapd.cli import main

_BASE = {"idp": {"issuer": "https://idp.example.com", "client_id": "zli"}}


def test_the_embedded_engine_is_the_default(tmp_path: Path) -> None:
    assert ServiceConfig.from_dict(_BASE, tmp_path).policy.engine == "embedded"


@pytest.mark.parametrize("engine", ["embedded", "opa", "opa+http://127.0.0.1:8181"])
def test_known_engines_are_accepted(tmp_path: Path, engine: str) -> None:
    config = ServiceConfig.from_dict({**_BASE, "policy": {"engine": engine}}, tmp_path)
    assert config.policy == PolicySettings(engine)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"engine": "opa+ftp://x"}, "not one of embedded, opa, opa+http://HOST:PORT"),
        ({"engine": "wasm"}, "not one of"),
        ({"engine": 3}, "must be a string"),
        ({"engines": "opa"}, "unknown keys in [policy]"),
    ],
)
def test_bad_engines_are_refused(tmp_path: Path, table: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        ServiceConfig.from_dict({**_BASE, "policy": table}, tmp_path)
    assert message in refused.value.message


def test_the_command_line_refuses_a_bad_engine_before_starting(tmp_path: Path) -> None:
    config = tmp_path / "mrzapd.toml"
    config.write_text('[idp]\nissuer = "https://idp.example.com"\nclient_id = "zli"\n')
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "data"),
            "--policy-engine",
            "wasm",
        ],
    )
    assert result.exit_code == 1
    assert "policy engine 'wasm' is not one of" in result.output
    assert not (tmp_path / "data").exists()
