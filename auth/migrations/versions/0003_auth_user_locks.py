"""User locks: an administrator's lock on a user, with who locked them, when and why.

Revision ID: auth_0003
Revises: auth_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "auth_0003"
down_revision = "auth_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Columns on the user row, not a table of their own: every authenticated call reads the
    # user row already, so checking the lock costs no extra query.
    with op.batch_alter_table("auth_users") as batch:
        batch.add_column(sa.Column("locked_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("locked_by", sa.String(320), nullable=True))
        batch.add_column(sa.Column("lock_reason", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_users") as batch:
        batch.drop_column("lock_reason")
        batch.drop_column("locked_by")
        batch.drop_column("locked_at")
