"""The table of just-in-time access requests and the queries on it.

A request's stored state is where a person left it (PENDING, APPROVED, DENIED); time does the
rest: an approved request whose access has ended, or a pending one nobody decided in time, reads
as EXPIRED. Nothing has to run for access to end, and every query applies the same rule.
Decisions are single conditional UPDATEs (only a still-pending request can be decided), so two
approvers, or two `mrzapd` processes, never both decide one request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Collection

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    String,
    Text,
    and_,
    false,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mrzap.storage import Database, rowcount

__all__ = ["AccessRequest", "AccessRequestState", "AccessRequestStore"]


class AccessRequestState(enum.Enum):
    """Where a request stands; values are the wire numbers of the contract."""

    PENDING = 1
    APPROVED = 2
    DENIED = 3
    EXPIRED = 4


class _Base(DeclarativeBase):
    pass


class _AccessRequestRow(_Base):
    __tablename__ = "policy_access_requests"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    policy_id: Mapped[str] = mapped_column(String(36))
    requester_user_id: Mapped[str] = mapped_column(String(36))
    requester_email: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text)
    duration_s: Mapped[float] = mapped_column(Float)
    state: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    pending_until: Mapped[float] = mapped_column(Float)
    decided_at: Mapped[float | None] = mapped_column(Float)
    decider_user_id: Mapped[str] = mapped_column(String(36))
    decider_email: Mapped[str] = mapped_column(String(320))
    decision_comment: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[float | None] = mapped_column(Float)


@dataclasses.dataclass(frozen=True)
class AccessRequest:
    """A user's request for the access of a just-in-time policy, as it stands at `now`."""

    id: str
    policy_id: str
    """The just-in-time policy asked under."""
    requester_user_id: str
    requester_email: str
    reason: str
    duration_s: float
    state: AccessRequestState
    """The state at the time of reading (EXPIRED once its time has passed)."""
    created_at: float
    pending_until: float
    """A request still pending at this time expires undecided."""
    decided_at: float | None
    decider_user_id: str
    """Empty while pending, and when approved automatically."""
    decider_email: str
    decision_comment: str
    expires_at: float | None
    """When approved access ends; None until approved."""


def _effective_state(row: _AccessRequestRow, now: float) -> AccessRequestState:
    state = AccessRequestState(row.state)
    if state is AccessRequestState.PENDING and now >= row.pending_until:
        return AccessRequestState.EXPIRED
    expired = row.expires_at is not None and now >= row.expires_at
    if state is AccessRequestState.APPROVED and expired:
        return AccessRequestState.EXPIRED
    return state


def _request(row: _AccessRequestRow, now: float) -> AccessRequest:
    return AccessRequest(
        id=row.id,
        policy_id=row.policy_id,
        requester_user_id=row.requester_user_id,
        requester_email=row.requester_email,
        reason=row.reason,
        duration_s=row.duration_s,
        state=_effective_state(row, now),
        created_at=row.created_at,
        pending_until=row.pending_until,
        decided_at=row.decided_at,
        decider_user_id=row.decider_user_id,
        decider_email=row.decider_email,
        decision_comment=row.decision_comment,
        expires_at=row.expires_at,
    )


def _in_state(state: AccessRequestState, now: float) -> ColumnElement[bool]:
    """The SQL condition for requests whose state at `now` is `state`."""
    row = _AccessRequestRow
    pending = row.state == AccessRequestState.PENDING.value
    approved = row.state == AccessRequestState.APPROVED.value
    if state is AccessRequestState.PENDING:
        return and_(pending, row.pending_until > now)
    if state is AccessRequestState.APPROVED:
        return and_(approved, row.expires_at > now)
    if state is AccessRequestState.DENIED:
        return row.state == AccessRequestState.DENIED.value
    return or_(
        row.state == AccessRequestState.EXPIRED.value,
        and_(pending, row.pending_until <= now),
        and_(approved, row.expires_at <= now),
    )


class AccessRequestStore:
    """Reads and writes `policy_access_requests`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        """A session in a transaction that commits when the block ends without an exception."""
        return self._db.transaction()

    async def add(self, s: AsyncSession, request: AccessRequest) -> None:
        """Store a new request (in the caller's transaction)."""
        s.add(
            _AccessRequestRow(
                id=request.id,
                policy_id=request.policy_id,
                requester_user_id=request.requester_user_id,
                requester_email=request.requester_email,
                reason=request.reason,
                duration_s=request.duration_s,
                state=request.state.value,
                created_at=request.created_at,
                pending_until=request.pending_until,
                decided_at=request.decided_at,
                decider_user_id=request.decider_user_id,
                decider_email=request.decider_email,
                decision_comment=request.decision_comment,
                expires_at=request.expires_at,
            )
        )
        await s.flush()

    async def get(self, request_id: str, now: float) -> AccessRequest | None:
        """The request with this id, as it stands at `now`."""
        async with self._db.session() as s:
            row = await s.get(_AccessRequestRow, request_id)
            return None if row is None else _request(row, now)

    async def decide(
        self,
        s: AsyncSession,
        request_id: str,
        now: float,
        *,
        state: AccessRequestState,
        decider_user_id: str,
        decider_email: str,
        comment: str,
        expires_at: float | None,
    ) -> bool:
        """Approve or deny a request that is still pending at `now`; False if it is not."""
        result = await s.execute(
            update(_AccessRequestRow)
            .where(
                _AccessRequestRow.id == request_id,
                _in_state(AccessRequestState.PENDING, now),
            )
            .values(
                state=state.value,
                decided_at=now,
                decider_user_id=decider_user_id,
                decider_email=decider_email,
                decision_comment=comment,
                expires_at=expires_at,
            )
        )
        return rowcount(result) == 1

    async def search(
        self,
        now: float,
        *,
        requester_user_id: str,
        decidable_policy_ids: Collection[str],
        states: Collection[AccessRequestState],
        after: tuple[float, str] | None,
        limit: int,
    ) -> list[AccessRequest]:
        """Requests by `requester_user_id` or under `decidable_policy_ids`, newest first."""
        row = _AccessRequestRow
        visible = or_(
            row.requester_user_id == requester_user_id if requester_user_id else false(),
            row.policy_id.in_(list(decidable_policy_ids)) if decidable_policy_ids else false(),
        )
        query = select(row).where(visible).order_by(row.created_at.desc(), row.id.desc())
        if states:
            query = query.where(or_(*(_in_state(state, now) for state in states)))
        if after is not None:
            created_at, request_id = after
            query = query.where(
                or_(
                    row.created_at < created_at,
                    and_(row.created_at == created_at, row.id < request_id),
                )
            )
        async with self._db.session() as s:
            return [_request(r, now) for r in await s.scalars(query.limit(limit))]

    async def active(self, now: float) -> list[AccessRequest]:
        """Every approved request whose access has not ended at `now`."""
        query = select(_AccessRequestRow).where(_in_state(AccessRequestState.APPROVED, now))
        async with self._db.session() as s:
            return [_request(r, now) for r in await s.scalars(query)]
