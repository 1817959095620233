"""The policy role's tables and the queries on them.

`policy_policies` holds each live policy's current version number (and its unique name);
`policy_versions` holds every version ever stored, rules as JSON, so an earlier version can be read
back after updates and deletion. `policy_revision` counts changes to policies and to just-in-time
access: every service process compares it before deciding, so a change made through one process
reaches the decisions of all of them.

Write methods take the caller's session when given, so the change and its audit event commit as
one transaction; an update is a conditional UPDATE on the version read, so two concurrent updates
cannot both win.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    Integer,
    String,
    Text,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mrzap.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mrzap.storage import Database, rowcount

from ._model import (
    Destination,
    JustInTimeRules,
    KubernetesRules,
    OrganizationControlsRules,
    Policy,
    PolicyKind,
    PolicyRules,
    ProxyRules,
    RegoRules,
    SessionRecordingRules,
    SubjectSelector,
    TargetConnectRules,
    TargetSelector,
    Verb,
    kind_of,
)

__all__ = ["MAX_NAME_LENGTH", "PolicyStore", "rules_from_json", "rules_to_json"]

#: The longest policy name.
MAX_NAME_LENGTH = 200


class _Base(DeclarativeBase):
    pass


class _PolicyRow(_Base):
    __tablename__ = "policy_policies"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class _VersionRow(_Base):
    __tablename__ = "policy_versions"
    policy_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    description: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))
    rules: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    deleted_at: Mapped[float | None] = mapped_column(Float)


class _RevisionRow(_Base):
    __tablename__ = "policy_revision"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)


def _policy(row: _VersionRow) -> Policy:
    return Policy(
        id=row.policy_id,
        name=row.name,
        description=row.description,
        rules=rules_from_json(PolicyKind(row.kind), row.rules),
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _check_name(name: str) -> None:
    if not name.strip():
        raise InvalidArgument("a policy needs a name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"a policy name has at most {MAX_NAME_LENGTH} characters")


class PolicyStore:
    """Reads and writes the policy role's tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def database(self) -> Database:
        """The database the tables live in."""
        return self._db

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        """A session in a transaction that commits when the block ends without an exception."""
        return self._db.transaction()

    @contextlib.asynccontextmanager
    async def _in(self, s: AsyncSession | None) -> AsyncIterator[AsyncSession]:
        if s is not None:
            yield s
            return
        async with self.transaction() as own:
            yield own

    async def create(
        self,
        name: str,
        description: str,
        rules: PolicyRules,
        now: float,
        s: AsyncSession | None = None,
    ) -> Policy:
        """Store a new policy at version 1.

        AlreadyExists if the name is taken; FailedPrecondition for a second organisation
        controls policy (an organisation has at most one).
        """
        _check_name(name)
        kind = kind_of(rules)
        policy = Policy(str(uuid.uuid4()), name, description, rules, 1, now, now)
        try:
            async with self._in(s) as tx:
                if await tx.scalar(select(_PolicyRow.id).where(_PolicyRow.name == name)):
                    raise AlreadyExists(f"a policy named {name!r} exists")
                if kind is PolicyKind.ORGANIZATION_CONTROLS and await tx.scalar(
                    select(_PolicyRow.id).where(_PolicyRow.kind == kind.value)
                ):
                    raise FailedPrecondition(
                        "the organisation has an organisation controls policy already: update it"
                    )
                tx.add(
                    _PolicyRow(
                        id=policy.id,
                        name=name,
                        kind=kind.value,
                        version=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
                tx.add(_version_row(policy))
                await tx.flush()
                await self.bump_revision(tx)
        except IntegrityError:
            # Two creations with one name raced; the unique index let one through.
            raise AlreadyExists(f"a policy named {name!r} exists") from None
        return policy

    async def get(self, policy_id: str, version: int = 0) -> Policy:
        """The current version of a policy, or version `version` (> 0) of it; NotFound if none.

        Earlier versions stay readable after the policy is deleted.
        """
        async with self._db.session() as s:
            if version > 0:
                row = await s.get(_VersionRow, (policy_id, version))
            else:
                row = await s.scalar(
                    select(_VersionRow)
                    .join(
                        _PolicyRow,
                        (_PolicyRow.id == _VersionRow.policy_id)
                        & (_PolicyRow.version == _VersionRow.version),
                    )
                    .where(_PolicyRow.id == policy_id)
                )
        if row is None:
            what = f"version {version} of policy {policy_id!r}" if version else policy_id
            raise NotFound(f"no policy {what}" if not version else f"no {what}")
        return _policy(row)

    async def list(self, after: tuple[str, str] | None, limit: int) -> list[Policy]:
        """Up to `limit` current policies ordered by (name, id), starting after `after`."""
        query = (
            select(_VersionRow)
            .join(
                _PolicyRow,
                (_PolicyRow.id == _VersionRow.policy_id)
                & (_PolicyRow.version == _VersionRow.version),
            )
            .order_by(_PolicyRow.name, _PolicyRow.id)
            .limit(limit)
        )
        if after is not None:
            name, policy_id = after
            query = query.where(
                (_PolicyRow.name > name) | ((_PolicyRow.name == name) & (_PolicyRow.id > policy_id))
            )
        async with self._db.session() as s:
            return [_policy(row) for row in await s.scalars(query)]

    async def all_current(self) -> builtins.list[Policy]:
        """Every live policy at its current version."""
        query = select(_VersionRow).join(
            _PolicyRow,
            (_PolicyRow.id == _VersionRow.policy_id) & (_PolicyRow.version == _VersionRow.version),
        )
        async with self._db.session() as s:
            return [_policy(row) for row in await s.scalars(query)]

    async def update(
        self,
        policy_id: str,
        name: str,
        description: str,
        rules: PolicyRules,
        now: float,
        s: AsyncSession | None = None,
    ) -> Policy:
        """Store a new version of a policy (its kind cannot change)."""
        _check_name(name)
        try:
            async with self._in(s) as tx:
                row = await tx.get(_PolicyRow, policy_id, populate_existing=True)
                if row is None:
                    raise NotFound(f"no policy {policy_id!r}")
                if row.kind != kind_of(rules).value:
                    raise InvalidArgument(
                        f"policy {row.name!r} is a {row.kind} policy; its kind cannot change"
                    )
                if name != row.name and await tx.scalar(
                    select(_PolicyRow.id).where(_PolicyRow.name == name)
                ):
                    raise AlreadyExists(f"a policy named {name!r} exists")
                version, created_at = row.version, row.created_at
                result = await tx.execute(
                    update(_PolicyRow)
                    .where(_PolicyRow.id == policy_id, _PolicyRow.version == version)
                    .values(name=name, version=version + 1, updated_at=now)
                )
                if rowcount(result) != 1:
                    raise FailedPrecondition(
                        f"policy {policy_id!r} changed meanwhile: read it again and retry"
                    )
                policy = Policy(policy_id, name, description, rules, version + 1, created_at, now)
                tx.add(_version_row(policy))
                await tx.flush()
                await self.bump_revision(tx)
        except IntegrityError:
            raise AlreadyExists(f"a policy named {name!r} exists") from None
        return policy

    async def delete(self, policy_id: str, now: float, s: AsyncSession | None = None) -> Policy:
        """Remove a policy; its versions stay on record. Returns its last version."""
        async with self._in(s) as tx:
            row = await tx.get(_PolicyRow, policy_id, populate_existing=True)
            if row is None:
                raise NotFound(f"no policy {policy_id!r}")
            last = await tx.get(_VersionRow, (policy_id, row.version), populate_existing=True)
            assert last is not None  # written with the policy row
            last.deleted_at = now
            await tx.delete(row)
            await tx.flush()
            await self.bump_revision(tx)
            return _policy(last)

    async def revision(self) -> int:
        """The change counter: it grows with every change to policies or JIT access."""
        async with self._db.session() as s:
            value = await s.scalar(select(_RevisionRow.revision).where(_RevisionRow.id == 1))
            return int(value or 0)

    async def bump_revision(self, s: AsyncSession | None = None) -> None:
        """Count a change, in `s` when given, so every process's decider reloads."""
        async with self._in(s) as tx:
            await tx.execute(
                update(_RevisionRow)
                .where(_RevisionRow.id == 1)
                .values(revision=_RevisionRow.revision + 1)
            )


def _version_row(policy: Policy) -> _VersionRow:
    return _VersionRow(
        policy_id=policy.id,
        version=policy.version,
        name=policy.name,
        description=policy.description,
        kind=policy.kind.value,
        rules=rules_to_json(policy.rules),
        created_at=policy.created_at,
        updated_at=policy.updated_at,
        deleted_at=None,
    )


def rules_to_json(rules: PolicyRules) -> dict[str, Any]:
    """The rules as a JSON object (tuples as lists, verbs by name, selectors as objects)."""
    return cast("dict[str, Any]", _to_json(rules))


def _to_json(value: object) -> object:
    if isinstance(value, Verb):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_json(item) for item in value]
    return value


def rules_from_json(kind: PolicyKind, document: Mapping[str, Any]) -> PolicyRules:
    """The rules of a policy of `kind` from `rules_to_json`'s form; InvalidArgument if malformed."""
    try:
        return cast("PolicyRules", _RULES_FROM_JSON[kind](document))
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidArgument(f"the stored {kind.value} rules are malformed: {error}") from None


def _subjects(document: Mapping[str, Any]) -> SubjectSelector:
    return SubjectSelector(
        tuple(document.get("user_emails", ())),
        tuple(document.get("groups", ())),
        tuple(document.get("api_key_ids", ())),
    )


def _targets(document: Mapping[str, Any]) -> TargetSelector:
    return TargetSelector(
        tuple(document.get("target_ids", ())), tuple(document.get("environment_ids", ()))
    )


_RULES_FROM_JSON: dict[PolicyKind, Any] = {
    PolicyKind.TARGET_CONNECT: lambda d: TargetConnectRules(
        _subjects(d["subjects"]),
        _targets(d["targets"]),
        tuple(d["target_users"]),
        tuple(Verb[name] for name in d["verbs"]),
        float(d["max_session_duration"]),
    ),
    PolicyKind.KUBERNETES: lambda d: KubernetesRules(
        _subjects(d["subjects"]),
        _targets(d["clusters"]),
        tuple(d["cluster_users"]),
        tuple(d["cluster_groups"]),
        float(d["max_session_duration"]),
    ),
    PolicyKind.PROXY: lambda d: ProxyRules(
        _subjects(d["subjects"]),
        _targets(d["targets"]),
        tuple(Destination(str(x["host"]), int(x["port"])) for x in d["destinations"]),
        tuple(d["target_users"]),
        float(d["max_session_duration"]),
    ),
    PolicyKind.SESSION_RECORDING: lambda d: SessionRecordingRules(
        _subjects(d["subjects"]), _targets(d["targets"]), bool(d["record_input"])
    ),
    PolicyKind.JUST_IN_TIME: lambda d: JustInTimeRules(
        _subjects(d["subjects"]),
        tuple(d["policy_ids"]),
        _subjects(d["approvers"]),
        bool(d["auto_approve"]),
        float(d["max_duration"]),
    ),
    PolicyKind.ORGANIZATION_CONTROLS: lambda d: OrganizationControlsRules(
        bool(d["mfa_required"]), float(d["mfa_window"]), float(d["max_session_ttl"])
    ),
    PolicyKind.REGO: lambda d: RegoRules(str(d["module"])),
}
