"""The broker role's tables: connection records and the revocations still in force.

Revision ID: broker_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "broker_0001"
down_revision = None
branch_labels = ("broker",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "broker_connections",
        # The channel id of the channel that opened the connection.
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("target_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("subject_iss", sa.String(1024), nullable=False),
        sa.Column("subject_sub", sa.String(255), nullable=False),
        sa.Column("subject_email", sa.String(320), nullable=False),
        sa.Column("verb", sa.Integer, nullable=False),
        sa.Column("target_user", sa.String(255), nullable=False),
        # A serialized bastion.mrzap.v1.Destination, for tunnels; empty otherwise.
        sa.Column("destination", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        # The channel last attached: only its end may detach or close the connection.
        sa.Column("channel_id", sa.String(64), nullable=False),
        # A JSON list of grant ids, oldest first.
        sa.Column("grant_ids", sa.Text, nullable=False),
        sa.Column("broker_id", sa.String(253), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=True),
        sa.Column("close_reason", sa.String(1024), nullable=False),
        sa.Column("recorded", sa.Boolean, nullable=False),
    )
    # Lists are newest first, per user or for the whole organisation.
    op.create_index("ix_broker_connections_created", "broker_connections", ["created_at", "id"])
    op.create_index(
        "ix_broker_connections_user_created", "broker_connections", ["user_id", "created_at"]
    )
    op.create_index("ix_broker_connections_state", "broker_connections", ["state", "expires_at"])
    op.create_table(
        "broker_revocations",
        sa.Column("id", sa.String(64), primary_key=True),
        # The exact bytes of the serialized Signed revocation, re-sent to agents unchanged.
        sa.Column("signed", sa.LargeBinary, nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("issued_at", sa.Float, nullable=False),
        # After this no grant it names could still be used: it no longer needs to be sent.
        sa.Column("kept_until", sa.Float, nullable=False),
    )
    op.create_index("ix_broker_revocations_kept_until", "broker_revocations", ["kept_until"])


def downgrade() -> None:
    op.drop_table("broker_revocations")
    op.drop_table("broker_connections")
