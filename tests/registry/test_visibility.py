"""Which targets a user who is not an administrator sees: `visible_scope`, and the store's scope."""

from __future__ import annotations

import dataclasses

import pytest

from policy import Principal, SubjectSelector, TargetConnectRules, TargetSelector, Verb

# The real rule and access types, not look-alikes: visibility reads them through protocols.
from policy._model import ActiveAccess, JustInTimeRules
from registry import TargetFilter, TargetScope
from registry._visibility import TargetVisibility, visible_scope

from .conftest import Org

ALICE = Principal(user_id="u-alice", email="alice@example.com", groups=("devs",))


@dataclasses.dataclass(frozen=True)
class _Policy:
    id: str
    rules: object


def _active(user_id: str, jit_policy_id: str) -> ActiveAccess:
    return ActiveAccess("r1", user_id, "", jit_policy_id, expires_at=2e9)


def _connect(
    subjects: SubjectSelector,
    target_ids: tuple[str, ...] = (),
    environment_ids: tuple[str, ...] = (),
    *,
    verbs: tuple[Verb, ...] = (Verb.SHELL,),
    target_users: tuple[str, ...] = ("dev",),
) -> TargetConnectRules:
    return TargetConnectRules(
        subjects=subjects,
        targets=TargetSelector(target_ids=target_ids, environment_ids=environment_ids),
        target_users=target_users,
        verbs=verbs,
    )


def test_policies_that_name_the_user_give_their_targets_and_environments() -> None:
    policies = [
        _Policy("p1", _connect(SubjectSelector(user_emails=("ALICE@example.com",)), ("t1",))),
        _Policy("p2", _connect(SubjectSelector(groups=("devs",)), environment_ids=("e1",))),
        _Policy("p3", _connect(SubjectSelector(user_emails=("bob@example.com",)), ("t3",))),
        _Policy("p4", _connect(SubjectSelector(groups=("ops",)), environment_ids=("e2",))),
    ]
    assert visible_scope(ALICE, policies) == TargetScope(frozenset({"t1"}), frozenset({"e1"}))
    # Nobody is matched by an empty selector, nor by an empty email or API key id.
    nobody = _Policy("p5", _connect(SubjectSelector(), ("t5",)))
    assert visible_scope(Principal(user_id="u-x"), [*policies, nobody]).empty


def test_policies_that_allow_nothing_show_nothing() -> None:
    everyone = SubjectSelector(groups=("devs",))
    policies = [
        _Policy("no-verbs", _connect(everyone, ("t1",), verbs=())),
        _Policy("no-users", _connect(everyone, ("t2",), target_users=())),
    ]
    assert visible_scope(ALICE, policies).empty


def test_api_keys_see_what_policies_naming_the_key_cover() -> None:
    key = Principal(api_key_id="k1")
    policies = [
        _Policy("p1", _connect(SubjectSelector(api_key_ids=("k1",)), ("t1",))),
        _Policy("p2", _connect(SubjectSelector(api_key_ids=("k2",)), ("t2",))),
    ]
    assert visible_scope(key, policies) == TargetScope(frozenset({"t1"}))


def test_approved_just_in_time_access_shows_the_policies_it_gives() -> None:
    policies = [
        _Policy("jit", JustInTimeRules(policy_ids=("prod",))),
        _Policy("prod", _connect(SubjectSelector(user_emails=("oncall@x",)), ("t-prod",))),
    ]
    assert visible_scope(ALICE, policies).empty
    assert visible_scope(ALICE, policies, [_active("u-bob", "jit")]).empty
    mine = visible_scope(ALICE, policies, [_active("u-alice", "jit")])
    assert mine == TargetScope(frozenset({"t-prod"}))
    # Access under a policy that is not (or no longer) a just-in-time one gives nothing.
    assert visible_scope(ALICE, policies, [_active("u-alice", "prod")]).empty


@pytest.mark.asyncio
async def test_visibility_reads_the_current_policies_each_time() -> None:
    class Source:
        def __init__(self) -> None:
            self.policies: list[_Policy] = []

        async def all_current(self) -> list[_Policy]:
            return self.policies

    source = Source()
    visibility = TargetVisibility(source)
    assert (await visibility.scope(ALICE)).empty
    source.policies = [_Policy("p1", _connect(SubjectSelector(groups=("devs",)), ("t1",)))]
    assert (await visibility.scope(ALICE)).target_ids == {"t1"}


@pytest.mark.asyncio
async def test_the_store_lists_only_targets_in_the_scope(org: Org) -> None:
    lab = await org.registry.create_environment("lab")
    web = (await org.register("web-1")).target
    db = (await org.register("db-1", lab.id)).target
    await org.register("ops-1")
    store = org.registry

    async def names(search: TargetFilter) -> list[str]:
        return [t.name for t in (await store.list_targets(search))[0]]

    assert await names(TargetFilter()) == ["db-1", "ops-1", "web-1"]
    assert await names(TargetFilter(scope=TargetScope())) == []
    scope = TargetScope(frozenset({web.id}), frozenset({lab.id}))
    assert await names(TargetFilter(scope=scope)) == ["db-1", "web-1"]
    assert await names(TargetFilter(scope=scope, name="ops-1")) == []
    assert scope.covers(db)
    assert scope.covers(web)
