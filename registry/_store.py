"""The registry role's tables and the queries on them.

Writes that depend on a row's current state (spending a token, a lifecycle transition) are single
conditional UPDATEs whose row count says whether they happened, so concurrent callers, several
`mrzapd` processes and both databases agree without locks. Methods that change several rows take
the caller's session, so the registry can commit them (and their audit events) as one transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import uuid
from collections.abc import Collection, Mapping

from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mrzap.errors import AlreadyExists
from mrzap.storage import Database, rowcount

__all__ = [
    "ActivationToken",
    "Environment",
    "RegistrationKey",
    "RegistryStore",
    "StateChange",
    "Target",
    "TargetFilter",
    "TargetScope",
    "TargetState",
    "new_id",
]


class TargetState(enum.Enum):
    """Where a target stands in its lifecycle; values are the wire numbers of the contract."""

    ACTIVATION = 1
    REGISTERED = 2
    ONLINE = 3
    OFFLINE = 4
    TERMINATED = 5


class _Base(DeclarativeBase):
    pass


class _OrgRow(_Base):
    __tablename__ = "registry_org"
    singleton: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[float] = mapped_column(Float)


class _EnvironmentRow(_Base):
    __tablename__ = "registry_environments"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(253))
    description: Mapped[str] = mapped_column(String(1024))
    offline_cleanup_timeout_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)


class _RegistrationKeyRow(_Base):
    __tablename__ = "registry_registration_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    name: Mapped[str] = mapped_column(String(253))
    environment_id: Mapped[str] = mapped_column(ForeignKey("registry_environments.id"))
    created_at: Mapped[float] = mapped_column(Float)
    rotated_at: Mapped[float | None] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class _TargetRow(_Base):
    __tablename__ = "registry_targets"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(253))
    environment_id: Mapped[str] = mapped_column(ForeignKey("registry_environments.id"))
    state: Mapped[str] = mapped_column(String(16))
    state_changed_at: Mapped[float] = mapped_column(Float)
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    hostname: Mapped[str] = mapped_column(String(253))
    agent_version: Mapped[str] = mapped_column(String(64))
    region: Mapped[str] = mapped_column(String(64))
    broker_id: Mapped[str] = mapped_column(String(253))
    created_at: Mapped[float] = mapped_column(Float)
    registered_at: Mapped[float | None] = mapped_column(Float)
    last_seen_at: Mapped[float | None] = mapped_column(Float)


class _ActivationTokenRow(_Base):
    __tablename__ = "registry_activation_tokens"
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    target_id: Mapped[str | None] = mapped_column(ForeignKey("registry_targets.id"))
    registration_key_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float)


class _StateChangeRow(_Base):
    __tablename__ = "registry_target_states"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("registry_targets.id"))
    state: Mapped[str] = mapped_column(String(16))
    time: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(1024))


@dataclasses.dataclass(frozen=True)
class Environment:
    """A group of targets that policies can select as a whole."""

    id: str
    name: str
    description: str
    offline_cleanup_timeout_s: float | None
    """How long a target may stay OFFLINE before it is TERMINATED; None: the service default."""
    created_at: float


@dataclasses.dataclass(frozen=True)
class RegistrationKey:
    """A long-lived credential that creates activation tokens for one environment."""

    id: str
    name: str
    environment_id: str
    created_at: float
    rotated_at: float | None
    expires_at: float | None
    last_used_at: float | None
    revoked_at: float | None
    secret_hash: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class ActivationToken:
    """A single-use token that registers one target (stored by its hash)."""

    token_hash: bytes = dataclasses.field(repr=False)
    target_id: str | None
    """None when the target was deleted before it registered."""
    registration_key_id: str | None
    """The registration key that created it; None when an administrator did."""
    created_at: float
    expires_at: float
    used_at: float | None


@dataclasses.dataclass(frozen=True)
class Target:
    """A machine that runs (or is about to run) an agent."""

    id: str
    name: str
    environment_id: str
    state: TargetState
    state_changed_at: float
    public_key: bytes | None
    hostname: str
    agent_version: str
    region: str
    broker_id: str
    """The broker holding the agent's control stream (the last one, once it is gone)."""
    created_at: float
    registered_at: float | None
    last_seen_at: float | None


@dataclasses.dataclass(frozen=True)
class StateChange:
    """One transition of a target's lifecycle."""

    state: TargetState
    time: float
    reason: str


@dataclasses.dataclass(frozen=True)
class TargetScope:
    """The targets a caller may see: these targets, and every target in these environments."""

    target_ids: frozenset[str] = frozenset()
    environment_ids: frozenset[str] = frozenset()

    def covers(self, target: Target) -> bool:
        """Whether `target` is in the scope."""
        return target.id in self.target_ids or target.environment_id in self.environment_ids

    @property
    def empty(self) -> bool:
        """Whether the scope holds no target at all."""
        return not self.target_ids and not self.environment_ids


@dataclasses.dataclass(frozen=True)
class TargetFilter:
    """Which targets to list; conditions combine with AND, and empty ones match everything."""

    environment_ids: frozenset[str] = frozenset()
    states: frozenset[TargetState] = frozenset()
    name: str = ""
    scope: TargetScope | None = None
    """Only targets in this scope (a caller's visible targets); None means every target."""


def _environment(row: _EnvironmentRow) -> Environment:
    return Environment(
        row.id, row.name, row.description, row.offline_cleanup_timeout_s, row.created_at
    )


def _registration_key(row: _RegistrationKeyRow) -> RegistrationKey:
    return RegistrationKey(
        id=row.id,
        name=row.name,
        environment_id=row.environment_id,
        created_at=row.created_at,
        rotated_at=row.rotated_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        secret_hash=row.secret_hash,
    )


def _activation_token(row: _ActivationTokenRow) -> ActivationToken:
    return ActivationToken(
        token_hash=row.token_hash,
        target_id=row.target_id,
        registration_key_id=row.registration_key_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
    )


def _target(row: _TargetRow) -> Target:
    return Target(
        id=row.id,
        name=row.name,
        environment_id=row.environment_id,
        state=TargetState[row.state],
        state_changed_at=row.state_changed_at,
        public_key=row.public_key,
        hostname=row.hostname,
        agent_version=row.agent_version,
        region=row.region,
        broker_id=row.broker_id,
        created_at=row.created_at,
        registered_at=row.registered_at,
        last_seen_at=row.last_seen_at,
    )


class RegistryStore:
    """Reads and writes the registry role's tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        """A session in a transaction that commits when the block ends without an exception."""
        return self._db.transaction()

    # The organisation.

    async def org_id(self) -> str:
        """The organisation's id, made when the registry's tables were created."""
        async with self._db.session() as s:
            return (await s.execute(select(_OrgRow.id))).scalar_one()

    # Environments.

    async def add_environment(self, environment: Environment) -> None:
        """Store a new environment; AlreadyExists if its name is taken."""
        try:
            async with self.transaction() as s:
                s.add(_EnvironmentRow(**dataclasses.asdict(environment)))
        except IntegrityError:
            raise AlreadyExists(f"an environment named {environment.name!r} exists") from None

    async def get_environment(self, environment_id: str) -> Environment | None:
        """The environment with this id, if any."""
        async with self._db.session() as s:
            row = await s.get(_EnvironmentRow, environment_id)
            return None if row is None else _environment(row)

    async def environment_by_name(self, name: str) -> Environment | None:
        """The environment with this name, if any."""
        async with self._db.session() as s:
            row = await s.scalar(select(_EnvironmentRow).where(_EnvironmentRow.name == name))
            return None if row is None else _environment(row)

    async def list_environments(
        self, after: tuple[str, str] | None, limit: int
    ) -> list[Environment]:
        """Up to `limit` environments ordered by (name, id), starting after `after`."""
        query = select(_EnvironmentRow).order_by(_EnvironmentRow.name, _EnvironmentRow.id)
        if after is not None:
            name, environment_id = after
            query = query.where(
                (_EnvironmentRow.name > name)
                | ((_EnvironmentRow.name == name) & (_EnvironmentRow.id > environment_id))
            )
        async with self._db.session() as s:
            return [_environment(row) for row in await s.scalars(query.limit(limit))]

    async def environment_members(
        self, s: AsyncSession, environment_id: str, limit: int
    ) -> tuple[int, list[str], list[str]]:
        """How many targets the environment has, some of their names, and its live keys' names."""
        count = await s.scalar(
            select(func.count())
            .select_from(_TargetRow)
            .where(_TargetRow.environment_id == environment_id)
        )
        names = await s.scalars(
            select(_TargetRow.name)
            .where(_TargetRow.environment_id == environment_id)
            .order_by(_TargetRow.name)
            .limit(limit)
        )
        keys = await s.scalars(
            select(_RegistrationKeyRow.name)
            .where(
                _RegistrationKeyRow.environment_id == environment_id,
                _RegistrationKeyRow.revoked_at.is_(None),
            )
            .order_by(_RegistrationKeyRow.name)
        )
        return count or 0, list(names), list(keys)

    async def delete_environment(self, s: AsyncSession, environment_id: str) -> None:
        """Delete an environment and the revoked registration keys that named it."""
        await s.execute(
            delete(_RegistrationKeyRow).where(
                _RegistrationKeyRow.environment_id == environment_id,
                _RegistrationKeyRow.revoked_at.is_not(None),
            )
        )
        await s.execute(delete(_EnvironmentRow).where(_EnvironmentRow.id == environment_id))

    # Registration keys.

    async def add_registration_key(self, key: RegistrationKey) -> None:
        """Store a new registration key."""
        async with self.transaction() as s:
            s.add(_RegistrationKeyRow(**dataclasses.asdict(key)))

    async def get_registration_key(self, key_id: str) -> RegistrationKey | None:
        """The registration key with this id (revoked or not), if any."""
        async with self._db.session() as s:
            row = await s.get(_RegistrationKeyRow, key_id)
            return None if row is None else _registration_key(row)

    async def list_registration_keys(
        self, after: tuple[str, str] | None, limit: int
    ) -> list[RegistrationKey]:
        """Up to `limit` keys that are not revoked, ordered by (name, id), after `after`."""
        query = (
            select(_RegistrationKeyRow)
            .where(_RegistrationKeyRow.revoked_at.is_(None))
            .order_by(_RegistrationKeyRow.name, _RegistrationKeyRow.id)
        )
        if after is not None:
            name, key_id = after
            query = query.where(
                (_RegistrationKeyRow.name > name)
                | ((_RegistrationKeyRow.name == name) & (_RegistrationKeyRow.id > key_id))
            )
        async with self._db.session() as s:
            return [_registration_key(row) for row in await s.scalars(query.limit(limit))]

    async def rotate_registration_key(self, key_id: str, secret_hash: bytes, now: float) -> bool:
        """Give a live key a new secret hash; False if it does not exist or is revoked."""
        async with self.transaction() as s:
            result = await s.execute(
                update(_RegistrationKeyRow)
                .where(_RegistrationKeyRow.id == key_id, _RegistrationKeyRow.revoked_at.is_(None))
                .values(secret_hash=secret_hash, rotated_at=now)
            )
            return rowcount(result) == 1

    async def revoke_registration_key(self, key_id: str, now: float) -> None:
        """Mark a key revoked (keeping the time of a first revocation)."""
        async with self.transaction() as s:
            await s.execute(
                update(_RegistrationKeyRow)
                .where(_RegistrationKeyRow.id == key_id, _RegistrationKeyRow.revoked_at.is_(None))
                .values(revoked_at=now)
            )

    async def touch_registration_key(self, s: AsyncSession, key_id: str, now: float) -> None:
        """Record that a key was used."""
        await s.execute(
            update(_RegistrationKeyRow)
            .where(_RegistrationKeyRow.id == key_id)
            .values(last_used_at=now)
        )

    # Activation tokens.

    async def add_activation_token(self, s: AsyncSession, token: ActivationToken) -> None:
        """Store a new activation token."""
        s.add(_ActivationTokenRow(**dataclasses.asdict(token)))

    async def get_activation_token(
        self, s: AsyncSession, token_hash: bytes
    ) -> ActivationToken | None:
        """The activation token with this hash, if any."""
        row = await s.get(_ActivationTokenRow, token_hash, populate_existing=True)
        return None if row is None else _activation_token(row)

    async def spend_activation_token(self, s: AsyncSession, token_hash: bytes, now: float) -> bool:
        """Mark an unused token used; False if it is unknown or was used already."""
        result = await s.execute(
            update(_ActivationTokenRow)
            .where(
                _ActivationTokenRow.token_hash == token_hash,
                _ActivationTokenRow.used_at.is_(None),
            )
            .values(used_at=now)
        )
        return rowcount(result) == 1

    async def forget_activation_tokens(self, expired_before: float) -> int:
        """Delete tokens that expired before `expired_before`; returns how many."""
        async with self.transaction() as s:
            result = await s.execute(
                delete(_ActivationTokenRow).where(_ActivationTokenRow.expires_at < expired_before)
            )
            return rowcount(result)

    # Targets.

    async def add_target(self, s: AsyncSession, target: Target, reason: str) -> None:
        """Store a new target and its first state."""
        values = dataclasses.asdict(target)
        values["state"] = target.state.name
        s.add(_TargetRow(**values))
        await s.flush()
        s.add(
            _StateChangeRow(
                target_id=target.id,
                state=target.state.name,
                time=target.state_changed_at,
                reason=reason,
            )
        )

    async def get_target(self, target_id: str, s: AsyncSession | None = None) -> Target | None:
        """The target with this id, if any (read in `s` when given)."""
        if s is not None:
            row = await s.get(_TargetRow, target_id, populate_existing=True)
            return None if row is None else _target(row)
        async with self._db.session() as own:
            row = await own.get(_TargetRow, target_id)
            return None if row is None else _target(row)

    async def state_changes(self, target_id: str) -> list[StateChange]:
        """Every state the target has been in, oldest first."""
        async with self._db.session() as s:
            rows = await s.scalars(
                select(_StateChangeRow)
                .where(_StateChangeRow.target_id == target_id)
                .order_by(_StateChangeRow.id)
            )
            return [StateChange(TargetState[row.state], row.time, row.reason) for row in rows]

    async def list_targets(
        self, search: TargetFilter, after: tuple[str, str] | None, limit: int
    ) -> list[Target]:
        """Up to `limit` matching targets ordered by (name, id), starting after `after`."""
        query = select(_TargetRow).order_by(_TargetRow.name, _TargetRow.id)
        if search.environment_ids:
            query = query.where(_TargetRow.environment_id.in_(sorted(search.environment_ids)))
        if search.states:
            query = query.where(_TargetRow.state.in_(sorted(s.name for s in search.states)))
        if search.name:
            query = query.where(_TargetRow.name == search.name)
        if search.scope is not None:
            if search.scope.empty:
                return []
            # In the query, not after it, so pages stay full and the page token stays right.
            query = query.where(
                _TargetRow.id.in_(sorted(search.scope.target_ids))
                | _TargetRow.environment_id.in_(sorted(search.scope.environment_ids))
            )
        if after is not None:
            name, target_id = after
            query = query.where(
                (_TargetRow.name > name) | ((_TargetRow.name == name) & (_TargetRow.id > target_id))
            )
        async with self._db.session() as s:
            return [_target(row) for row in await s.scalars(query.limit(limit))]

    async def update_target(self, s: AsyncSession, target_id: str, **values: object) -> bool:
        """Change columns of a target; False if it does not exist."""
        result = await s.execute(
            update(_TargetRow).where(_TargetRow.id == target_id).values(**values)
        )
        return rowcount(result) == 1

    async def transition(
        self,
        s: AsyncSession,
        target_id: str,
        state: TargetState,
        now: float,
        reason: str,
        *,
        from_states: Collection[TargetState],
        on_broker: str | None = None,
        last_seen_by: float | None = None,
        changed_before: float | None = None,
        values: Mapping[str, object] | None = None,
    ) -> bool:
        """Move a target to `state`, recording the change, if it is in one of `from_states` and,
        where given, routed to `on_broker`, last seen at or before `last_seen_by`, and in its
        state since at or before `changed_before`. `values` sets other columns with the state.
        Returns whether the target moved.
        """
        query = update(_TargetRow).where(
            _TargetRow.id == target_id,
            _TargetRow.state.in_([s.name for s in from_states]),
        )
        if on_broker is not None:
            query = query.where(_TargetRow.broker_id == on_broker)
        if last_seen_by is not None:
            query = query.where(_TargetRow.last_seen_at <= last_seen_by)
        if changed_before is not None:
            query = query.where(_TargetRow.state_changed_at <= changed_before)
        result = await s.execute(
            query.values(state=state.name, state_changed_at=now, **(values or {}))
        )
        if rowcount(result) != 1:
            return False
        await s.execute(
            insert(_StateChangeRow).values(
                target_id=target_id, state=state.name, time=now, reason=reason
            )
        )
        return True

    async def delete_target(
        self, s: AsyncSession, target_id: str, *, only_in: TargetState | None = None
    ) -> bool:
        """Delete a target (only if in state `only_in`, when given); False if nothing was.

        The foreign keys delete its state history and detach its activation tokens, which then
        say that their target was deleted.
        """
        query = delete(_TargetRow).where(_TargetRow.id == target_id)
        if only_in is not None:
            query = query.where(_TargetRow.state == only_in.name)
        return rowcount(await s.execute(query)) == 1

    async def mark_seen(self, target_ids: Collection[str], when: float) -> set[str]:
        """Set last_seen for all these targets in one statement; the ids of those that exist."""
        async with self.transaction() as s:
            found = await s.execute(
                update(_TargetRow)
                .where(_TargetRow.id.in_(sorted(target_ids)))
                .values(last_seen_at=when)
                .returning(_TargetRow.id)
            )
            return set(found.scalars())

    async def silent_targets(self, last_seen_by: float) -> list[str]:
        """ONLINE targets last heard from at or before `last_seen_by`."""
        async with self._db.session() as s:
            return list(
                await s.scalars(
                    select(_TargetRow.id).where(
                        _TargetRow.state == TargetState.ONLINE.name,
                        _TargetRow.last_seen_at <= last_seen_by,
                    )
                )
            )

    async def long_offline_targets(
        self, now: float, default_timeout_s: float
    ) -> list[tuple[str, float]]:
        """OFFLINE targets past their environment's cleanup timeout, with that timeout."""
        timeout = func.coalesce(_EnvironmentRow.offline_cleanup_timeout_s, default_timeout_s)
        async with self._db.session() as s:
            rows = await s.execute(
                select(_TargetRow.id, timeout)
                .join(_EnvironmentRow, _EnvironmentRow.id == _TargetRow.environment_id)
                .where(
                    _TargetRow.state == TargetState.OFFLINE.name,
                    _TargetRow.state_changed_at + timeout <= now,
                )
            )
            return [(target_id, float(seconds)) for target_id, seconds in rows]

    async def abandoned_activations(self, now: float) -> list[str]:
        """Targets still in ACTIVATION whose every token has expired or been spent."""
        live = (
            select(_ActivationTokenRow.target_id)
            .where(
                _ActivationTokenRow.target_id == _TargetRow.id,
                _ActivationTokenRow.used_at.is_(None),
                _ActivationTokenRow.expires_at > now,
            )
            .exists()
        )
        async with self._db.session() as s:
            return list(
                await s.scalars(
                    select(_TargetRow.id).where(
                        _TargetRow.state == TargetState.ACTIVATION.name, ~live
                    )
                )
            )


def new_id() -> str:
    """A new random id for an environment or a target."""
    return str(uuid.uuid4())
