"""Just-in-time access requests: who asked under which policy, and how it was decided.

Revision ID: policy_0002
Revises: policy_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "policy_0002"
down_revision = "policy_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_access_requests",
        sa.Column("id", sa.String(36), primary_key=True),
        # No foreign key to the policy: a request stays on record after its policy is deleted.
        sa.Column("policy_id", sa.String(36), nullable=False),
        sa.Column("requester_user_id", sa.String(36), nullable=False),
        sa.Column("requester_email", sa.String(320), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("pending_until", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("decider_user_id", sa.String(36), nullable=False),
        sa.Column("decider_email", sa.String(320), nullable=False),
        sa.Column("decision_comment", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
    )
    # Listing (own requests, requests under a policy) newest first, and the active-access query.
    op.create_index(
        "ix_policy_access_requests_requester",
        "policy_access_requests",
        ["requester_user_id", "created_at"],
    )
    op.create_index(
        "ix_policy_access_requests_policy", "policy_access_requests", ["policy_id", "created_at"]
    )
    op.create_index(
        "ix_policy_access_requests_state", "policy_access_requests", ["state", "expires_at"]
    )


def downgrade() -> None:
    op.drop_table("policy_access_requests")
