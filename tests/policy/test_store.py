"""The policy store on SQLite and PostgreSQL: versions kept, names unique, kinds fixed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mrzap.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mrzap.storage import Database
from policy._migrations import MIGRATIONS
from policy._model import (
    Destination,
    JustInTimeRules,
    KubernetesRules,
    OrganizationControlsRules,
    PolicyKind,
    PolicyRules,
    ProxyRules,
    RegoRules,
    SessionRecordingRules,
    SubjectSelector,
    TargetConnectRules,
    TargetSelector,
    Verb,
)
from policy._store import PolicyStore

SHELL = TargetConnectRules(
    SubjectSelector(("a@example.com",), ("ops",), ("mzk_1",)),
    TargetSelector(("t-1",), ("env-1",)),
    ("root",),
    (Verb.SHELL, Verb.EXEC),
    3600.0,
)

EVERY_KIND: list[PolicyRules] = [
    SHELL,
    KubernetesRules(SubjectSelector(groups=("ops",)), TargetSelector(("k-1",)), ("v",), ("g",), 60),
    ProxyRules(
        SubjectSelector(groups=("dev",)),
        TargetSelector(environment_ids=("e",)),
        (Destination("db", 5432),),
        ("postgres",),
        0,
    ),
    SessionRecordingRules(SubjectSelector(groups=("ops",)), TargetSelector(("t-1",)), True),
    JustInTimeRules(
        SubjectSelector(groups=("dev",)), ("p",), SubjectSelector(groups=("ops",)), True, 900
    ),
    OrganizationControlsRules(True, 900, 3600),
    RegoRules("package mrzap.custom.x\n"),
]


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[PolicyStore]:
    """A migrated, empty store."""
    db = Database(database_url)
    db.migrate([MIGRATIONS])
    yield PolicyStore(db)
    await db.close()


@pytest.mark.asyncio
async def test_every_kind_round_trips(store: PolicyStore) -> None:
    """Rules of every kind come back as they were stored, at version 1."""
    for index, rules in enumerate(EVERY_KIND):
        created = await store.create(f"p{index}", "about it", rules, 100.0)
        fetched = await store.get(created.id)
        assert fetched == created
        assert (fetched.rules, fetched.version, fetched.kind) == (rules, 1, created.kind)
    kinds = {policy.kind for policy in await store.all_current()}
    assert kinds == set(PolicyKind)


@pytest.mark.asyncio
async def test_updates_keep_every_version(store: PolicyStore) -> None:
    """Each update adds a version; earlier ones stay readable, even after deletion."""
    first = await store.create("shell", "v1", SHELL, 100.0)
    narrower = TargetConnectRules(SHELL.subjects, SHELL.targets, ("ubuntu",), (Verb.SHELL,))
    second = await store.update(first.id, "shell-2", "v2", narrower, 200.0)
    assert (second.version, second.created_at, second.updated_at) == (2, 100.0, 200.0)
    assert (await store.get(first.id)).rules == narrower
    assert (await store.get(first.id, 1)).rules == SHELL
    assert (await store.get(first.id, 1)).name == "shell"
    revision = await store.revision()
    deleted = await store.delete(first.id, 300.0)
    assert deleted == second
    assert await store.revision() == revision + 1
    with pytest.raises(NotFound):
        await store.get(first.id)
    assert (await store.get(first.id, 2)).description == "v2"
    with pytest.raises(NotFound):
        await store.get(first.id, 3)
    assert await store.all_current() == []


@pytest.mark.asyncio
async def test_names_are_unique(store: PolicyStore) -> None:
    """A second policy cannot take a name in use, by creation or by renaming."""
    await store.create("shell", "", SHELL, 1.0)
    other = await store.create("other", "", SHELL, 1.0)
    with pytest.raises(AlreadyExists):
        await store.create("shell", "", SHELL, 2.0)
    with pytest.raises(AlreadyExists):
        await store.update(other.id, "shell", "", SHELL, 2.0)
    assert len(await store.all_current()) == 2


@pytest.mark.asyncio
async def test_kind_cannot_change_and_bad_input_changes_nothing(store: PolicyStore) -> None:
    """Changing the kind, an empty name or an unknown id is refused and stores nothing."""
    policy = await store.create("shell", "", SHELL, 1.0)
    revision = await store.revision()
    with pytest.raises(InvalidArgument, match="its kind cannot change"):
        await store.update(policy.id, "shell", "", RegoRules("package mrzap.custom.x"), 2.0)
    with pytest.raises(InvalidArgument, match="needs a name"):
        await store.create("  ", "", SHELL, 2.0)
    with pytest.raises(NotFound):
        await store.update("nope", "x", "", SHELL, 2.0)
    with pytest.raises(NotFound):
        await store.delete("nope", 2.0)
    assert await store.get(policy.id) == policy
    assert await store.revision() == revision


@pytest.mark.asyncio
async def test_one_organisation_controls_policy(store: PolicyStore) -> None:
    """An organisation has at most one organisation controls policy."""
    await store.create("org", "", OrganizationControlsRules(True, 60, 0), 1.0)
    with pytest.raises(FailedPrecondition, match="update it"):
        await store.create("org-2", "", OrganizationControlsRules(False, 0, 0), 1.0)


@pytest.mark.asyncio
async def test_list_pages_by_name(store: PolicyStore) -> None:
    """Policies list in name order, a page at a time."""
    for name in ("c", "a", "b", "d"):
        await store.create(name, "", SHELL, 1.0)
    first = await store.list(None, 3)
    assert [p.name for p in first] == ["a", "b", "c"]
    rest = await store.list((first[-1].name, first[-1].id), 3)
    assert [p.name for p in rest] == ["d"]


@pytest.mark.asyncio
async def test_changes_in_a_transaction_roll_back_together(store: PolicyStore) -> None:
    """A change made in the caller's transaction disappears with it, revision included."""
    revision = await store.revision()

    class Abort(Exception):
        pass

    async def create_then_fail() -> None:
        async with store.transaction() as s:
            await store.create("shell", "", SHELL, 1.0, s)
            raise Abort

    with pytest.raises(Abort):
        await create_then_fail()
    assert await store.all_current() == []
    assert await store.revision() == revision
