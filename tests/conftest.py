"""Fixtures shared by the whole suite: databases on SQLite and on PostgreSQL, system parts.

Tests that need a part of the machine (PostgreSQL, Chromium) skip with the reason when it is
missing, except under `MRZAP_TEST_STRICT=1` (set by CI), where a missing part fails the test.
"""

from __future__ import annotations

import contextlib
import os

# As in the agent (see agent/__init__.py): tests fork shells and commands next to gRPC's threads,
# and gRPC reads this when first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest

from mrzap.storage import sqlite_url
from mrzap.testing import TestIdentityProvider
from tests.accounts import create_login_account, remove_login_account

#: The PostgreSQL server the storage tests use; `tools/system-deps.sh` starts it and makes the role.
POSTGRES_URL = os.environ.get(
    "MRZAP_TEST_POSTGRES", "postgresql://mrzap_test:mrzap_test@127.0.0.1:5432/postgres"
)


def pytest_configure(config: pytest.Config) -> None:
    create_login_account()


def pytest_unconfigure(config: pytest.Config) -> None:
    remove_login_account()


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdentityProvider]:
    """A test identity provider on loopback, one per test module."""
    with TestIdentityProvider() as provider:
        yield provider


def missing_system_part(reason: str) -> NoReturn:
    """Skip the test for want of `reason`; under MRZAP_TEST_STRICT=1 fail it instead."""
    if os.environ.get("MRZAP_TEST_STRICT") == "1":
        pytest.fail(f"{reason} (MRZAP_TEST_STRICT=1: run tools/system-deps.sh as root)")
    pytest.skip(f"{reason}: `make test` as root installs and starts it")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a reachable PostgreSQL server whose role may create databases."""
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            pass
    except psycopg.Error as error:
        missing_system_part(f"PostgreSQL is not reachable at {POSTGRES_URL} ({error})")
    return POSTGRES_URL


@contextlib.contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server (dropped afterwards); yields its URL."""
    name = f"mrzap_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + name
    finally:
        _drop_database(server_url, name)


def _drop_database(server_url: str, name: str, timeout_s: float = 10.0) -> None:
    """Drop `name`, ending the sessions a test left open in it (FORCE).

    FORCE may end only sessions of the test's own role: an autovacuum worker that happens to be
    in the new database makes it fail with InsufficientPrivilege. The worker is done in moments,
    so the drop is tried again until `timeout_s` has passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg.errors.InsufficientPrivilege:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL (storage tests run on both)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "mrzap.db")
    else:
        with fresh_postgres_database(request.getfixturevalue("postgres_server")) as url:
            yield url
