"""The audit role's table: the event log.

Revision ID: audit_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = None
branch_labels = ("audit",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        # Insertion order: breaks ties between events of the same time, and pages by it.
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("kind", sa.Integer, nullable=False),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=False),
        sa.Column("connection_id", sa.String(64), nullable=False),
        sa.Column("event", sa.LargeBinary, nullable=False),
        sa.Column("search_text", sa.Text, nullable=False),
    )
    # Listing is newest first, overall or for one target or user.
    op.create_index("ix_audit_events_time", "audit_events", ["time", "seq"])
    op.create_index("ix_audit_events_target", "audit_events", ["target_id", "time"])
    op.create_index("ix_audit_events_user", "audit_events", ["user_id", "time"])


def downgrade() -> None:
    op.drop_table("audit_events")
