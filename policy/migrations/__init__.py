"""The policy role's Alembic migrations (the "policy" branch)."""
