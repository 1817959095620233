"""The storage base: one SQL database shared by the service roles, each owning its tables.

SQLite (WAL) in the data directory by default; PostgreSQL when several `mrzapd` processes share
state. Roles talk to the database through SQLAlchemy's asyncio API so no query blocks the event
loop. Each role keeps its Alembic migrations in its own version folder and branch, and `migrate`
brings the chosen roles' tables up to date at start-up (DESIGN.md section 5).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import alembic.command
import alembic.config
from sqlalchemy import event
from sqlalchemy.engine import URL, CursorResult, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from .errors import InvalidArgument

__all__ = ["Database", "MigrationBranch", "rowcount", "sqlite_url"]

_MIGRATIONS_ENV = Path(__file__).with_name("migrations")
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


@dataclasses.dataclass(frozen=True)
class MigrationBranch:
    """One role's migrations: an Alembic branch whose revisions live in `versions`."""

    label: str
    """The branch label, e.g. "auth"."""

    versions: Path
    """The folder of the branch's revision scripts."""


def sqlite_url(path: Path) -> str:
    """The database URL of an SQLite file."""
    return f"sqlite:///{path.resolve()}"


def _with_driver(url: URL, drivers: dict[str, str]) -> URL:
    backend = url.get_backend_name()
    if backend not in drivers:
        raise InvalidArgument(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
    return url.set(drivername=drivers[backend])


class Database:
    """A connection pool to the service's database."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except Exception:  # SQLAlchemy raises several types for unparsable URLs
            raise InvalidArgument("the database URL does not parse") from None
        self._url = parsed
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.engine: AsyncEngine = create_async_engine(_with_driver(parsed, _ASYNC_DRIVERS))
        if self.is_sqlite and parsed.database not in (None, "", ":memory:"):
            _create_private_file(Path(parsed.database))
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        """A new unit of work; use as `async with db.session() as s, s.begin(): ...`."""
        return self.sessions()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that commits when the block ends without an exception."""
        async with self.sessions() as s, s.begin():
            yield s

    def migrate(self, branches: Sequence[MigrationBranch]) -> None:
        """Bring the tables of `branches` up to date (synchronously: run it before serving)."""
        config = alembic.config.Config()
        config.set_main_option("script_location", str(_MIGRATIONS_ENV))
        config.set_main_option(
            "version_locations", " ".join(str(branch.versions) for branch in branches)
        )
        config.set_main_option("path_separator", "space")
        sync_url = _with_driver(self._url, _SYNC_DRIVERS)
        config.attributes["url"] = sync_url
        for branch in branches:
            alembic.command.upgrade(config, f"{branch.label}@head")

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def rowcount(result: Any) -> int:  # noqa: ANN401 - what AsyncSession.execute returns for DML
    """How many rows an UPDATE or DELETE matched (execute's static type does not say it has one)."""
    return cast("CursorResult[Any]", result).rowcount


def _create_private_file(path: Path) -> None:
    # The database holds MFA secrets and session keys: create it 0600 (SQLite gives its WAL and
    # shared-memory files the database file's mode) in a directory only the service can enter.
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _sqlite_pragmas(connection: Any, _record: Any) -> None:  # noqa: ANN401 - DB-API objects
    # WAL lets readers run beside the single writer; the busy timeout makes concurrent writers
    # wait instead of failing; SQLite leaves foreign keys off unless asked.
    cursor = connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "foreign_keys=ON",
        "busy_timeout=5000",
        "synchronous=NORMAL",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
