"""The storage base: SQLite files are private to the service."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mrzap.errors import InvalidArgument
from mrzap.storage import Database, sqlite_url


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.asyncio
async def test_sqlite_database_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "mrzap.db"
    database = Database(sqlite_url(path))
    try:
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
    finally:
        await database.close()


@pytest.mark.asyncio
async def test_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "mrzap.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    database = Database(sqlite_url(path))
    await database.close()
    assert mode(path) == 0o640  # an operator's choice is theirs


def test_unsupported_database_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unsupported database"):
        Database("mysql://db/mrzap")
