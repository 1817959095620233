"""The API-key table of the auth role and the queries on it."""

from __future__ import annotations

import dataclasses

from sqlalchemy import Boolean, Float, LargeBinary, String, select, update
from sqlalchemy.orm import Mapped, mapped_column

from mrzap.storage import Database, rowcount

from ._store import _Base

__all__ = ["ApiKey", "ApiKeyStore"]


class _ApiKeyRow(_Base):
    __tablename__ = "auth_api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    name: Mapped[str] = mapped_column(String(100))
    admin: Mapped[bool] = mapped_column(Boolean)
    creator_user_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """A service account's credential, without its secret."""

    id: str
    """The public identifier, also the prefix of the secret."""

    name: str
    """What the key is for."""

    admin: bool
    """Whether calls made with the key have administrator rights."""

    creator_user_id: str
    """The administrator who created it; empty if that user no longer exists."""

    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked_at: float | None


def _api_key(row: _ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.id,
        row.name,
        row.admin,
        row.creator_user_id or "",
        row.created_at,
        row.expires_at,
        row.last_used_at,
        row.revoked_at,
    )


class ApiKeyStore:
    """Reads and writes the auth role's API keys."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, key: ApiKey, secret_hash: bytes) -> None:
        """Store a new key with the hash of its secret."""
        async with self._db.session() as s, s.begin():
            s.add(
                _ApiKeyRow(
                    id=key.id,
                    secret_hash=secret_hash,
                    name=key.name,
                    admin=key.admin,
                    creator_user_id=key.creator_user_id or None,
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                    last_used_at=key.last_used_at,
                    revoked_at=key.revoked_at,
                )
            )

    async def get_with_hash(self, key_id: str) -> tuple[ApiKey, bytes] | None:
        """The key with this id and the hash of its secret, if it exists."""
        async with self._db.session() as s:
            row = await s.get(_ApiKeyRow, key_id)
            return None if row is None else (_api_key(row), row.secret_hash)

    async def list_live(self, after: tuple[str, str] | None, limit: int) -> list[ApiKey]:
        """Up to `limit` keys not revoked, ordered by (name, id), starting after `after`."""
        query = (
            select(_ApiKeyRow)
            .where(_ApiKeyRow.revoked_at.is_(None))
            .order_by(_ApiKeyRow.name, _ApiKeyRow.id)
            .limit(limit)
        )
        if after is not None:
            name, key_id = after
            query = query.where(
                (_ApiKeyRow.name > name) | ((_ApiKeyRow.name == name) & (_ApiKeyRow.id > key_id))
            )
        async with self._db.session() as s:
            return [_api_key(row) for row in await s.scalars(query)]

    async def revoke(self, key_id: str, now: float) -> bool:
        """Revoke a live key; False if there is no such key or it was revoked already."""
        async with self._db.session() as s, s.begin():
            result = await s.execute(
                update(_ApiKeyRow)
                .where(_ApiKeyRow.id == key_id, _ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return rowcount(result) == 1

    async def touch(self, key_id: str, now: float, older_than: float) -> None:
        """Set the key's last use to `now` unless it was already set after `older_than`.

        The condition keeps a busy key from costing a write on every call.
        """
        async with self._db.session() as s, s.begin():
            await s.execute(
                update(_ApiKeyRow)
                .where(
                    _ApiKeyRow.id == key_id,
                    _ApiKeyRow.last_used_at.is_(None) | (_ApiKeyRow.last_used_at < older_than),
                )
                .values(last_used_at=now)
            )
