"""The registry role's tables: the organisation, environments, registration keys, activation
tokens, targets and their state history; with the organisation's id and the default environment.

Revision ID: registry_0001
Revises:
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "registry_0001"
down_revision = None
branch_labels = ("registry",)
depends_on = None


def upgrade() -> None:
    org = op.create_table(
        "registry_org",
        # One row: the organisation this database serves; grants name its id.
        sa.Column("singleton", sa.Integer, primary_key=True),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.CheckConstraint("singleton = 1", name="ck_registry_org_singleton"),
    )
    environments = op.create_table(
        "registry_environments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(253), nullable=False, unique=True),
        sa.Column("description", sa.String(1024), nullable=False),
        # NULL: the service's default cleanup timeout applies.
        sa.Column("offline_cleanup_timeout_s", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "registry_registration_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column(
            "environment_id",
            sa.String(36),
            sa.ForeignKey("registry_environments.id"),
            nullable=False,
        ),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("rotated_at", sa.Float, nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("last_used_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_index(
        "ix_registry_registration_keys_environment",
        "registry_registration_keys",
        ["environment_id"],
    )
    op.create_table(
        "registry_targets",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column(
            "environment_id",
            sa.String(36),
            sa.ForeignKey("registry_environments.id"),
            nullable=False,
        ),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_changed_at", sa.Float, nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=True),
        sa.Column("hostname", sa.String(253), nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("broker_id", sa.String(253), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("registered_at", sa.Float, nullable=True),
        sa.Column("last_seen_at", sa.Float, nullable=True),
    )
    op.create_index("ix_registry_targets_name", "registry_targets", ["name", "id"])
    op.create_index("ix_registry_targets_environment", "registry_targets", ["environment_id"])
    op.create_index("ix_registry_targets_state", "registry_targets", ["state"])
    op.create_table(
        "registry_activation_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        # NULL once the target is deleted: the token then says so when it is presented.
        sa.Column(
            "target_id",
            sa.String(36),
            sa.ForeignKey("registry_targets.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("registration_key_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_index(
        "ix_registry_activation_tokens_target", "registry_activation_tokens", ["target_id"]
    )
    op.create_table(
        "registry_target_states",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "target_id",
            sa.String(36),
            sa.ForeignKey("registry_targets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
    )
    op.create_index("ix_registry_target_states_target", "registry_target_states", ["target_id"])
    now = time.time()
    op.bulk_insert(org, [{"singleton": 1, "id": str(uuid.uuid4()), "created_at": now}])
    op.bulk_insert(
        environments,
        [
            {
                "id": str(uuid.uuid4()),
                "name": "default",
                "description": "Targets registered without an environment.",
                "offline_cleanup_timeout_s": None,
                "created_at": now,
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("registry_target_states")
    op.drop_table("registry_activation_tokens")
    op.drop_table("registry_targets")
    op.drop_table("registry_registration_keys")
    op.drop_table("registry_environments")
    op.drop_table("registry_org")
