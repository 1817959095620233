"""The auth role's tables and the queries on them."""

from __future__ import annotations

import dataclasses
import uuid

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mrzap.storage import Database, rowcount

__all__ = ["AuthStore", "MfaState", "Session", "User", "UserLock"]


class _Base(DeclarativeBase):
    pass


class _UserRow(_Base):
    __tablename__ = "auth_users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(320))
    groups: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    last_login_at: Mapped[float] = mapped_column(Float)
    locked_at: Mapped[float | None] = mapped_column(Float)
    locked_by: Mapped[str | None] = mapped_column(String(320))
    lock_reason: Mapped[str | None] = mapped_column(Text)


class _MfaRow(_Base):
    __tablename__ = "auth_mfa"
    user_id: Mapped[str] = mapped_column(ForeignKey("auth_users.id"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(64))
    confirmed_at: Mapped[float | None] = mapped_column(Float)
    last_counter: Mapped[int] = mapped_column(BigInteger)
    failures: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[float] = mapped_column(Float)


class _SessionRow(_Base):
    __tablename__ = "auth_sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    user_id: Mapped[str] = mapped_column(ForeignKey("auth_users.id"))
    upk: Mapped[bytes] = mapped_column(LargeBinary(32))
    started_at: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    mfa_verified_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


@dataclasses.dataclass(frozen=True)
class UserLock:
    """An administrator's lock on a user: while it stands, the user cannot log in or call."""

    locked_at: float
    locked_by: str
    """Who locked the user, as audit logs name them (an email, a user id or an API key)."""
    reason: str


@dataclasses.dataclass(frozen=True)
class User:
    """A person who has logged in at least once."""

    id: str
    issuer: str
    subject: str
    email: str
    groups: tuple[str, ...]
    created_at: float
    last_login_at: float
    lock: UserLock | None = None
    """The administrator's lock, while the user is locked."""

    @property
    def locked(self) -> bool:
        """Whether an administrator has locked the user."""
        return self.lock is not None


@dataclasses.dataclass(frozen=True)
class MfaState:
    """A user's TOTP enrolment and lock-out state."""

    user_id: str
    secret: str = dataclasses.field(repr=False)
    confirmed_at: float | None
    last_counter: int
    failures: int
    locked_until: float


@dataclasses.dataclass(frozen=True)
class Session:
    """A service session, bound to the client's session key `upk`."""

    id: str
    user_id: str
    upk: bytes
    started_at: float
    created_at: float
    expires_at: float
    mfa_verified_at: float | None
    revoked_at: float | None


def _user(row: _UserRow) -> User:
    lock = None
    if row.locked_at is not None:
        lock = UserLock(row.locked_at, row.locked_by or "", row.lock_reason or "")
    return User(
        row.id,
        row.issuer,
        row.subject,
        row.email,
        tuple(row.groups),
        row.created_at,
        row.last_login_at,
        lock,
    )


def _mfa(row: _MfaRow) -> MfaState:
    return MfaState(
        row.user_id, row.secret, row.confirmed_at, row.last_counter, row.failures, row.locked_until
    )


def _session(row: _SessionRow) -> Session:
    return Session(
        row.id,
        row.user_id,
        row.upk,
        row.started_at,
        row.created_at,
        row.expires_at,
        row.mfa_verified_at,
        row.revoked_at,
    )


class AuthStore:
    """Reads and writes the auth role's tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def database(self) -> Database:
        """The database the tables live in (the role's other stores share it)."""
        return self._db

    async def upsert_user(
        self, issuer: str, subject: str, email: str, groups: tuple[str, ...], now: float
    ) -> User:
        """The user with this identity, created on first login; email and groups refreshed."""
        async with self._db.session() as s, s.begin():
            row = await s.scalar(
                select(_UserRow).where(_UserRow.issuer == issuer, _UserRow.subject == subject)
            )
            if row is None:
                row = _UserRow(
                    id=str(uuid.uuid4()),
                    issuer=issuer,
                    subject=subject,
                    created_at=now,
                    email=email,
                    groups=list(groups),
                    last_login_at=now,
                )
                s.add(row)
            else:
                row.email, row.groups, row.last_login_at = email, list(groups), now
            await s.flush()
            return _user(row)

    async def user_by_identity(self, issuer: str, subject: str) -> User | None:
        """The user the identity provider names (`issuer`, `subject`), if they logged in before."""
        async with self._db.session() as s:
            row = await s.scalar(
                select(_UserRow).where(_UserRow.issuer == issuer, _UserRow.subject == subject)
            )
            return None if row is None else _user(row)

    async def set_lock(self, user_id: str, lock: UserLock | None, now: float) -> User | None:
        """Lock the user (ending their sessions in the same transaction) or, with None, unlock.

        Returns the user after the change; None if there is no such user.
        """
        async with self._db.session() as s, s.begin():
            row = await s.get(_UserRow, user_id, with_for_update=True)
            if row is None:
                return None
            if lock is None:
                row.locked_at = row.locked_by = row.lock_reason = None
            else:
                row.locked_at, row.locked_by, row.lock_reason = (
                    lock.locked_at,
                    lock.locked_by,
                    lock.reason,
                )
                # One transaction: no session outlives the lock, even one started meanwhile.
                await s.execute(
                    update(_SessionRow)
                    .where(_SessionRow.user_id == user_id, _SessionRow.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
            await s.flush()
            return _user(row)

    async def get_user(self, user_id: str) -> User | None:
        """The user with this id, if any."""
        async with self._db.session() as s:
            row = await s.get(_UserRow, user_id)
            return None if row is None else _user(row)

    async def find_user(self, name: str) -> User | None:
        """The user whose id or email is `name`, if any."""
        async with self._db.session() as s:
            row = await s.scalar(
                select(_UserRow).where((_UserRow.id == name) | (_UserRow.email == name.lower()))
            )
            return None if row is None else _user(row)

    async def list_users(self, after: tuple[str, str] | None, limit: int) -> list[User]:
        """Up to `limit` users ordered by (email, id), starting after the `after` pair."""
        query = select(_UserRow).order_by(_UserRow.email, _UserRow.id).limit(limit)
        if after is not None:
            email, user_id = after
            query = query.where(
                (_UserRow.email > email) | ((_UserRow.email == email) & (_UserRow.id > user_id))
            )
        async with self._db.session() as s:
            return [_user(row) for row in await s.scalars(query)]

    async def get_mfa(self, user_id: str) -> MfaState | None:
        """The user's MFA state, if they have started enrolment."""
        async with self._db.session() as s:
            row = await s.get(_MfaRow, user_id)
            return None if row is None else _mfa(row)

    async def start_enrolment(self, user_id: str, secret: str) -> None:
        """Store a new, unconfirmed TOTP secret, replacing an unconfirmed one."""
        async with self._db.session() as s, s.begin():
            row = await s.get(_MfaRow, user_id)
            if row is None:
                s.add(
                    _MfaRow(
                        user_id=user_id,
                        secret=secret,
                        confirmed_at=None,
                        last_counter=-1,
                        failures=0,
                        locked_until=0.0,
                    )
                )
            else:
                row.secret, row.confirmed_at, row.last_counter = secret, None, -1

    async def use_counter(self, user_id: str, counter: int, now: float) -> bool:
        """Record a successful code atomically; False if that time step was already used.

        The conditional update makes a code usable once even under concurrent requests.
        """
        async with self._db.session() as s, s.begin():
            result = await s.execute(
                update(_MfaRow)
                .where(_MfaRow.user_id == user_id, _MfaRow.last_counter < counter)
                .values(last_counter=counter, failures=0, locked_until=0.0)
            )
            if rowcount(result) != 1:
                return False
            await s.execute(
                update(_MfaRow)
                .where(_MfaRow.user_id == user_id, _MfaRow.confirmed_at.is_(None))
                .values(confirmed_at=now)
            )
            return True

    async def record_failure(self, user_id: str, lock_until: float | None) -> int:
        """Count a failed code (and lock until `lock_until` if given); returns the new count."""
        async with self._db.session() as s, s.begin():
            row = await s.get(_MfaRow, user_id, with_for_update=True)
            if row is None:
                return 0
            row.failures += 1
            if lock_until is not None:
                row.locked_until = lock_until
            return row.failures

    async def delete_mfa(self, user_id: str) -> bool:
        """Forget the user's MFA enrolment and lock-out; False if there was none."""
        async with self._db.session() as s, s.begin():
            row = await s.get(_MfaRow, user_id)
            if row is None:
                return False
            await s.delete(row)
            return True

    async def create_session(
        self,
        token_hash: bytes,
        user_id: str,
        upk: bytes,
        started_at: float,
        now: float,
        expires_at: float,
        mfa_verified_at: float | None,
    ) -> Session:
        """Store a new session."""
        row = _SessionRow(
            id=str(uuid.uuid4()),
            token_hash=token_hash,
            user_id=user_id,
            upk=upk,
            started_at=started_at,
            created_at=now,
            expires_at=expires_at,
            mfa_verified_at=mfa_verified_at,
            revoked_at=None,
        )
        async with self._db.session() as s, s.begin():
            s.add(row)
        return _session(row)

    async def session_by_token(self, token_hash: bytes) -> Session | None:
        """The session whose token hashes to `token_hash`, if any."""
        async with self._db.session() as s:
            row = await s.scalar(select(_SessionRow).where(_SessionRow.token_hash == token_hash))
            return None if row is None else _session(row)

    async def update_session(
        self,
        session_id: str,
        *,
        expires_at: float | None = None,
        mfa_verified_at: float | None = None,
        revoked_at: float | None = None,
    ) -> None:
        """Change a session's expiry, MFA time or revocation."""
        values: dict[str, float] = {}
        if expires_at is not None:
            values["expires_at"] = expires_at
        if mfa_verified_at is not None:
            values["mfa_verified_at"] = mfa_verified_at
        if revoked_at is not None:
            values["revoked_at"] = revoked_at
        async with self._db.session() as s, s.begin():
            await s.execute(update(_SessionRow).where(_SessionRow.id == session_id).values(values))

    async def revoke_user_sessions(self, user_id: str, now: float) -> None:
        """End every live session of a user."""
        async with self._db.session() as s, s.begin():
            await s.execute(
                update(_SessionRow)
                .where(_SessionRow.user_id == user_id, _SessionRow.revoked_at.is_(None))
                .values(revoked_at=now)
            )
