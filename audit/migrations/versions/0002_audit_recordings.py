"""The audit role's recordings: one row per recorded connection, and its signed chunks.

Revision ID: audit_0002
Revises: audit_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0002"
down_revision = "audit_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_recordings",
        sa.Column("connection_id", sa.String(64), primary_key=True),
        sa.Column("target_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("email", sa.String(512), nullable=False),
        sa.Column("target_user", sa.String(256), nullable=False),
        sa.Column("grant_id", sa.String(64), nullable=False),
        sa.Column("input_recorded", sa.Boolean, nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("start_time", sa.Float, nullable=False),
        sa.Column("end_time", sa.Float, nullable=False),
        sa.Column("chunk_count", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("stored_bytes", sa.BigInteger, nullable=False),
        sa.Column("agent_public_key", sa.LargeBinary, nullable=False),
    )
    # Listing is newest first, overall, per user (their own) or per target; purging by end time.
    op.create_index("ix_audit_recordings_start", "audit_recordings", ["start_time"])
    op.create_index("ix_audit_recordings_owner", "audit_recordings", ["issuer", "subject"])
    op.create_index("ix_audit_recordings_target", "audit_recordings", ["target_id", "start_time"])
    op.create_index("ix_audit_recordings_end", "audit_recordings", ["end_time"])
    op.create_table(
        "audit_recording_chunks",
        sa.Column("connection_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        # SHA-256 of the exact signed bytes: recognises a chunk the agent sends again.
        sa.Column("sha256", sa.LargeBinary, nullable=False),
        # The exact signed bytes, zlib-compressed.
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_recording_chunks")
    op.drop_table("audit_recordings")
