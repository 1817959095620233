"""`mrzapd serve --db postgresql://…`: the login flow with the service state in PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.conftest import fresh_postgres_database

from .conftest import start_cluster
from .test_login import enrol


def test_login_with_the_service_on_postgresql(postgres_server: str, tmp_path: Path) -> None:
    with fresh_postgres_database(postgres_server) as database:
        cluster, processes = start_cluster(tmp_path / "pg", database=database)
        try:
            home = tmp_path / "zli"
            enrol(cluster, home, "bob")
            whoami = cluster.zli(home, "whoami")
            assert whoami.wait() == 0, whoami.output
            assert "bob@example.com" in whoami.output
        finally:
            for process in processes:
                process.stop()
        with psycopg.connect(database) as connection:
            rows = connection.execute("SELECT email FROM auth_users").fetchall()
        assert rows == [("bob@example.com",)]
        assert not (tmp_path / "pg" / "data" / "mrzap.db").exists()  # nothing went to SQLite
