"""The service credential: created once with mode 0600, refused when others can read it, and
checked exactly (a missing, wrong or truncated credential is refused)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mrzap.errors import InvalidArgument, PermissionDenied
from policy import ServiceCredential
from policy._service_credential import SERVICE_CREDENTIAL_HEADER


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def _check(credential: ServiceCredential, metadata: tuple[tuple[str, str], ...]) -> None:
    context: Any = _Context(metadata)
    credential.check(context)


def test_created_once_private_and_stable(tmp_path: Path) -> None:
    first = ServiceCredential.load_or_create(tmp_path)
    path = tmp_path / "service-credential"
    assert path.stat().st_mode & 0o777 == 0o600
    second = ServiceCredential.load_or_create(tmp_path)
    assert first.metadata() == second.metadata()
    assert first.metadata()[0][1] not in repr(first)


def test_a_readable_credential_file_is_refused(tmp_path: Path) -> None:
    ServiceCredential.load_or_create(tmp_path)
    os.chmod(tmp_path / "service-credential", 0o644)
    with pytest.raises(InvalidArgument, match="chmod 600"):
        ServiceCredential.load_or_create(tmp_path)


def test_only_the_exact_credential_passes(tmp_path: Path) -> None:
    credential = ServiceCredential.load_or_create(tmp_path)
    _check(credential, credential.metadata())
    secret = credential.metadata()[0][1]
    for metadata in (
        (),
        ((SERVICE_CREDENTIAL_HEADER, ""),),
        ((SERVICE_CREDENTIAL_HEADER, secret[:-1]),),
        ((SERVICE_CREDENTIAL_HEADER, secret + "x"),),
        (("authorization", f"Bearer {secret}"),),
    ):
        with pytest.raises(PermissionDenied):
            _check(credential, metadata)


def test_a_short_credential_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        ServiceCredential("too short")
