"""The policy role's tables: policies, every version of them, and a change counter.

Revision ID: policy_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "policy_0001"
down_revision = None
branch_labels = ("policy",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_policies",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    # Every version of every policy, including those of deleted policies, so an earlier one
    # can be read back and audit events can name what decided.
    op.create_table(
        "policy_versions",
        sa.Column("policy_id", sa.String(36), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("rules", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("deleted_at", sa.Float, nullable=True),
    )
    # One row counting changes, so every service process notices another's change cheaply.
    op.create_table(
        "policy_revision",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        sa.table("policy_revision", sa.column("id", sa.Integer), sa.column("revision")),
        [{"id": 1, "revision": 0}],
    )


def downgrade() -> None:
    op.drop_table("policy_revision")
    op.drop_table("policy_versions")
    op.drop_table("policy_policies")
