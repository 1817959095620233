"""The `[audit]` section of the `mrzapd` configuration: how long recordings are kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit import AuditConfig
from mrzap.errors import InvalidArgument
from mrzapd._config import ServiceConfig

IDP = {"issuer": "https://idp.example.com", "client_id": "zli"}


def test_recordings_are_kept_90_days_by_default(tmp_path: Path) -> None:
    config = ServiceConfig.from_dict({"idp": IDP}, tmp_path)
    assert config.audit == AuditConfig()
    assert config.audit.recording_retention_s == 90 * 86400


def test_the_retention_and_purge_interval_are_read(tmp_path: Path) -> None:
    section = {"recording_retention": "30d", "purge_interval": "10m"}
    config = ServiceConfig.from_dict({"idp": IDP, "audit": section}, tmp_path)
    assert config.audit == AuditConfig(recording_retention_s=30 * 86400, purge_interval_s=600)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"recording_retention": "forever"}, "audit.recording_retention"),
        ({"purge_interval": 0}, "audit.purge_interval"),
        ({"retention": "1d"}, "unknown keys in \\[audit\\]"),
    ],
)
def test_bad_values_are_refused_with_the_key(
    tmp_path: Path, section: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ServiceConfig.from_dict({"idp": IDP, "audit": section}, tmp_path)
