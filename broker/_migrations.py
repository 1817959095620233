"""Where the broker role's migrations live."""

from __future__ import annotations

from pathlib import Path

from mrzap.storage import MigrationBranch

MIGRATIONS = MigrationBranch("broker", Path(__file__).with_name("migrations") / "versions")
