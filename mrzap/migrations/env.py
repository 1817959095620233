"""The Alembic environment shared by every role's migration branch (see `Database.migrate`)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL

from mrzap.storage import _sqlite_pragmas


def run_migrations() -> None:
    """Run the requested upgrade on a short-lived synchronous connection."""
    url: URL = context.config.attributes["url"]
    engine = create_engine(url)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    with engine.connect() as connection:
        context.configure(connection=connection, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
