"""Where the policy role's migrations live."""

from __future__ import annotations

from pathlib import Path

from mrzap.storage import MigrationBranch

MIGRATIONS = MigrationBranch("policy", Path(__file__).with_name("migrations") / "versions")
