"""The credential by which one service role proves to another that it is part of the service.

The policy role decides for other roles (`EvaluateAccess`) and signs grants for the broker
(`IssueGrant`, `IssueRevocation`). In one process those calls never leave it; in a split
deployment the broker calls the policy role over gRPC and presents this credential, so it needs
no grant key. The credential is a random secret in `DATA_DIR/keys/service-credential` (mode 0600),
created on first start; the operator copies that file to every role's data directory. It travels
in the `mrzap-service-credential` metadata header over TLS and is compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any

import grpc.aio

from mrzap.errors import InvalidArgument, PermissionDenied
from mrzap.keys import write_secret_file

__all__ = ["SERVICE_CREDENTIAL_HEADER", "ServiceCredential"]

#: The metadata header a service role presents its credential in.
SERVICE_CREDENTIAL_HEADER = "mrzap-service-credential"

_FILE_NAME = "service-credential"


class ServiceCredential:
    """The shared secret of the service's roles."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 32:
            raise InvalidArgument("a service credential must have at least 32 characters")
        self._secret = secret

    def __repr__(self) -> str:
        return "ServiceCredential(<secret>)"

    @classmethod
    def load_or_create(cls, data_dir: Path) -> ServiceCredential:
        """The credential in `data_dir`, created on first start. Blocking file I/O."""
        path = data_dir / _FILE_NAME
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_secret_file(path, secrets.token_urlsafe(32).encode())
        if path.stat().st_mode & 0o077:
            raise InvalidArgument(f"{path} must be readable by its owner only (chmod 600)")
        return cls(path.read_text().strip())

    def metadata(self) -> tuple[tuple[str, str]]:
        """The call metadata that presents the credential."""
        return ((SERVICE_CREDENTIAL_HEADER, self._secret),)

    def check(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """PermissionDenied unless the call presents this credential."""
        presented = ""
        for key, value in context.invocation_metadata() or ():
            if key == SERVICE_CREDENTIAL_HEADER and isinstance(value, str):
                presented = value
        if not presented or not hmac.compare_digest(presented.encode(), self._secret.encode()):
            raise PermissionDenied("only the service's own roles may make this call")
