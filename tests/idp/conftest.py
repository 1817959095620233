"""Fixtures for the development IdP tests: a config file and a real `python -m idp` process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from idp.testing import IdpProcess

from .client import write_config


@pytest.fixture(scope="session")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("idp-config") / "idp.toml")


@pytest.fixture(scope="session")
def idp(config_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdpProcess]:
    """One IdP process shared by the tests that only talk to it over HTTP."""
    work = tmp_path_factory.mktemp("idp")
    with IdpProcess(config_path, work / "data", work / "idp.log") as process:
        yield process
