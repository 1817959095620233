"""Fixtures of the auth tests that talk to a whole service: a test IdP and `mrzapd` on loopback
with admin@example.com as its administrator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from mrzap.testing import TestIdentityProvider
from mrzapd._config import ServiceConfig
from mrzapd._server import RunningServer, start_server


@pytest_asyncio.fixture
async def server(idp: TestIdentityProvider, tmp_path: Path) -> AsyncIterator[RunningServer]:
    config = ServiceConfig.from_dict(
        {
            "server": {"listen": "127.0.0.1:0"},
            "idp": {"issuer": idp.issuer, "client_id": "zli"},
            "admins": {"emails": ["admin@example.com"]},
        },
        tmp_path,
    )
    running = await start_server(config)
    yield running
    await running.stop(0)
