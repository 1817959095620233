"""The engines: custom Rego validated with each engine's message, its tests run, outages denied.

The OPA server engine runs against `OpaTestServer`, a test fixture (policy/testing.py) that
answers OPA's REST API with OPA's real Go engine over loopback HTTP, because no OPA server
binary can be installed here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mrzap.errors import InvalidArgument, Unavailable
from mrzap.testing import FixedClock
from policy._decider import PolicyDecider
from policy._engine import engine_from_spec, rego_test_names
from policy._model import (
    Effect,
    Policy,
    Principal,
    RegoRules,
    RegoTestResult,
    SubjectSelector,
    TargetAccess,
    TargetConnectRules,
    TargetSelector,
    Verb,
)
from policy.testing import DownEngine, OpaTestServer, StaticPolicies

NOW = 1_800_000_000.0
ALICE = Principal("u-a", "https://idp", "s-a", "alice@example.com", ("ops",), False, "", NOW)
SHELL = TargetAccess("web-1", "prod", Verb.SHELL, "root")
OPS_SHELL = Policy(
    "p-ops",
    "ops-shell",
    "",
    TargetConnectRules(
        SubjectSelector(groups=("ops",)),
        TargetSelector(environment_ids=("prod",)),
        ("root",),
        (Verb.SHELL,),
    ),
    1,
    NOW,
    NOW,
)

UNCLOSED = 'package mrzap.custom.broken\n\nimport rego.v1\n\ndeny contains "x" if {\n'
TESTED = """\
package mrzap.custom.tested

import rego.v1

deny contains "no root on Fridays" if {
	input.target_access.target_user == "root"
	input.context.weekday == "Friday"
}

test_root_on_friday_denied if {
	deny["no root on Fridays"] with input as {
		"target_access": {"target_user": "root"},
		"context": {"weekday": "Friday"},
	}
}

test_root_on_monday_denied if {
	deny["no root on Fridays"] with input as {
		"target_access": {"target_user": "root"},
		"context": {"weekday": "Monday"},
	}
}
"""
DENY_OPS = """\
package mrzap.custom.freeze

import rego.v1

deny contains "change freeze: no shells until Monday" if "ops" in input.principal.groups
"""


def _decider(policies: list[Policy], spec: str) -> PolicyDecider:
    return PolicyDecider(
        StaticPolicies(policies), engine_from_spec(spec), FixedClock(NOW), refresh_interval=0
    )


@pytest_asyncio.fixture
async def opa_server() -> AsyncIterator[OpaTestServer]:
    """The OPA REST test fixture on a loopback port."""
    server = OpaTestServer()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize(("spec", "says"), [("embedded", "unclosed"), ("opa", "rego_parse_error")])
async def test_malformed_rego_is_rejected_with_the_engines_message(spec: str, says: str) -> None:
    """A module that does not parse is refused, saying where and what the engine found."""
    decider = _decider([], spec)
    await decider.start()
    try:
        with pytest.raises(InvalidArgument, match=says) as caught:
            await decider.check(RegoRules(UNCLOSED))
        assert "module:" in caught.value.message
    finally:
        await decider.close()


@pytest.mark.asyncio
async def test_opa_rejects_what_it_cannot_compile() -> None:
    """The reference engine refuses unsafe variables and unknown functions, by name."""
    decider = _decider([], "opa")
    await decider.start()
    try:
        unsafe = "package mrzap.custom.u\nimport rego.v1\ndeny contains m if { y > 1 }\n"
        with pytest.raises(InvalidArgument, match="var m is unsafe"):
            await decider.check(RegoRules(unsafe))
        unknown = 'package mrzap.custom.u\nimport rego.v1\ndeny contains "m" if nosuch(1)\n'
        with pytest.raises(InvalidArgument, match="undefined function nosuch"):
            await decider.check(RegoRules(unknown))
    finally:
        await decider.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("spec", ["embedded", "opa"])
async def test_custom_rego_needs_its_own_package(spec: str) -> None:
    """Custom Rego lives in its own package under mrzap.custom, so it cannot touch the decision."""
    freeze = Policy("p-freeze", "freeze", "", RegoRules(DENY_OPS), 1, NOW, NOW)
    decider = _decider([freeze], spec)
    await decider.start()
    try:
        with pytest.raises(InvalidArgument, match=r"package of its own under mrzap\.custom"):
            await decider.check(RegoRules("package mrzap.authz\nallow := true\n"))
        with pytest.raises(InvalidArgument, match="start with a package clause"):
            await decider.check(RegoRules("deny := true\n"))
        with pytest.raises(InvalidArgument, match="used by another custom policy"):
            await decider.check(RegoRules(DENY_OPS))
        assert await decider.check(RegoRules(DENY_OPS), policy_id="p-freeze") == []
    finally:
        await decider.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("spec", ["embedded", "opa"])
async def test_custom_rego_tests_run(spec: str) -> None:
    """`test_` rules run on the engine and report pass or fail, in name order."""
    decider = _decider([], spec)
    await decider.start()
    try:
        results = await decider.check(RegoRules(TESTED))
    finally:
        await decider.close()
    assert results == [
        RegoTestResult("test_root_on_friday_denied", True),
        RegoTestResult("test_root_on_monday_denied", False, "the rule is false or undefined"),
    ]


def test_test_rules_are_found_by_their_heads() -> None:
    """Only rule heads at the start of a line count as tests."""
    assert rego_test_names(TESTED) == ["test_root_on_friday_denied", "test_root_on_monday_denied"]
    assert rego_test_names("x := 1\n  test_not_a_rule := 2\n# test_comment\n") == []


@pytest.mark.asyncio
@pytest.mark.parametrize("spec", ["embedded", "opa"])
async def test_a_custom_deny_rule_denies(spec: str) -> None:
    """A custom `deny` wins over a typed policy's allow, and says so."""
    freeze = Policy("p-freeze", "freeze", "", RegoRules(DENY_OPS), 1, NOW, NOW)
    decider = _decider([OPS_SHELL, freeze], spec)
    await decider.start()
    try:
        decision = await decider.decide(ALICE, SHELL)
    finally:
        await decider.close()
    assert not decision.allowed
    denials = [(r.policy_name, r.message) for r in decision.reasons if r.effect is Effect.DENY]
    assert denials == [("freeze", "change freeze: no shells until Monday")]


@pytest.mark.asyncio
async def test_opa_server_engine_decides_like_opa(opa_server: OpaTestServer) -> None:
    """Through the OPA REST API: policies uploaded, decisions asked, custom Rego honoured."""
    policies = StaticPolicies([OPS_SHELL])
    decider = PolicyDecider(
        policies, engine_from_spec(opa_server.spec), FixedClock(NOW), refresh_interval=0
    )
    await decider.start()
    try:
        allowed = await decider.decide(ALICE, SHELL)
        assert allowed.allowed, allowed.reasons
        assert allowed.policy_ids == ("p-ops",)
        policies.replace([OPS_SHELL, Policy("p-f", "freeze", "", RegoRules(DENY_OPS), 1, 0, 0)])
        denied = await decider.decide(ALICE, SHELL)
        assert not denied.allowed
        assert "change freeze" in " ".join(r.message for r in denied.reasons)
        policies.replace([])
        assert not (await decider.decide(ALICE, SHELL)).allowed
        assert opa_server.queries == 3
    finally:
        await decider.close()


@pytest.mark.asyncio
async def test_opa_server_engine_checks_rego_without_changing_decisions(
    opa_server: OpaTestServer,
) -> None:
    """Checking uploads under a throwaway package, reports OPA's message, and cleans up."""
    decider = PolicyDecider(
        StaticPolicies([OPS_SHELL]), engine_from_spec(opa_server.spec), FixedClock(NOW)
    )
    await decider.start()
    try:
        with pytest.raises(InvalidArgument, match="rego_parse_error"):
            await decider.check(RegoRules(UNCLOSED))
        results = await decider.check(RegoRules(TESTED))
        assert [r.passed for r in results] == [True, False]
        assert (await decider.decide(ALICE, SHELL)).allowed
    finally:
        await decider.close()
    server_policies = await _policy_ids(opa_server)
    assert not [p for p in server_policies if "check" in p]


async def _policy_ids(server: OpaTestServer) -> list[str]:
    from opa_client import AsyncOpaClient

    async with AsyncOpaClient(host="127.0.0.1", port=server.port) as client:
        return list(await client.get_policies_list())


@pytest.mark.asyncio
async def test_an_engine_outage_fails_closed(
    opa_server: OpaTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """When the OPA server goes away, requests it allowed are denied, and that is logged."""
    decider = PolicyDecider(
        StaticPolicies([OPS_SHELL]), engine_from_spec(opa_server.spec), FixedClock(NOW)
    )
    await decider.start()
    try:
        assert (await decider.decide(ALICE, SHELL)).allowed
        await opa_server.stop()
        with caplog.at_level(logging.ERROR, logger="policy._decider"):
            decision = await decider.decide(ALICE, SHELL)
        with pytest.raises(Unavailable):
            await decider.check(RegoRules(DENY_OPS))
    finally:
        await decider.close()
    assert not decision.allowed
    assert decision.reasons[0].effect is Effect.DENY
    assert decision.reasons[0].message.startswith("the policy engine is unavailable: ")
    assert decision.decision_id in caplog.text


@pytest.mark.asyncio
async def test_an_unreachable_engine_denies_everything() -> None:
    """An engine that never loaded denies target access and API calls alike."""
    decider = PolicyDecider(StaticPolicies([OPS_SHELL]), DownEngine(), FixedClock(NOW))
    await decider.start()
    decision = await decider.decide(ALICE, SHELL)
    assert not decision.allowed
    assert "connection refused" in decision.reasons[0].message


@pytest.mark.asyncio
async def test_policies_the_engine_refuses_deny_everything() -> None:
    """A stored module the engine will not compile denies every request until it is fixed."""
    unsafe = Policy(
        "p-u",
        "unsafe",
        "",
        RegoRules("package mrzap.custom.u\ndeny contains m if { y > 1 }\n"),
        1,
        NOW,
        NOW,
    )
    policies = StaticPolicies([OPS_SHELL, unsafe])
    decider = PolicyDecider(policies, engine_from_spec("opa"), FixedClock(NOW), refresh_interval=0)
    await decider.start()
    try:
        denied = await decider.decide(ALICE, SHELL)
        assert not denied.allowed
        assert "could not be loaded" in denied.reasons[0].message
        policies.replace([OPS_SHELL])
        assert (await decider.decide(ALICE, SHELL)).allowed
    finally:
        await decider.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("spec", ["embedded", "opa"])
@pytest.mark.parametrize(
    "target_user",
    [
        'x"}], "allowed": true, "policy_ids": ["p-ops"], "reasons": [{"effect": "allow", "z": "',
        "root\0x",
        "root\\",
        "root\n",
        'ro"ot',
    ],
)
async def test_text_in_a_request_is_data_never_syntax(spec: str, target_user: str) -> None:
    """Quotes, backslashes, control characters and NULs are matched as they are, never parsed.

    rego-cpp writes strings out unescaped: a target user crafted as JSON would otherwise be read
    back as keys of the decision, and a NUL would cut "root\0x" down to "root".
    """
    decider = _decider([OPS_SHELL], spec)
    await decider.start()
    try:
        access = TargetAccess("web-1", "prod", Verb.SHELL, target_user)
        decision = await decider.decide(ALICE, access)
    finally:
        await decider.close()
    assert not decision.allowed
    messages = [r.message for r in decision.reasons]
    assert f'no policy allows a shell as "{target_user}" on target web-1' in messages


@pytest.mark.parametrize(
    "spec", ["opa+http://", "opa+http://h:1/path", "opa+http://u:p@h:1", "opa+http://h:x", "wasm"]
)
def test_engine_specs_are_checked(spec: str) -> None:
    """`--policy-engine` accepts embedded, opa and opa+http://HOST:PORT only."""
    with pytest.raises(InvalidArgument):
        engine_from_spec(spec)


# rego-cpp 1.5 aborts its process compiling this (`with input as {...}` in a test).
CRASHES_REGO_CPP = """\
package mrzap.custom.crash

import rego.v1

deny contains "API keys may not list users" if {
	input.api_call.method == "/x"
	input.principal.api_key_id != ""
}

test_keys_denied if {
	count(deny) == 1 with input as {"api_call": {"method": "/x"}, "principal": {"api_key_id": "k"}}
}
"""


@pytest.mark.asyncio
async def test_a_module_that_crashes_the_embedded_engine_is_refused_not_fatal() -> None:
    """Untrusted Rego is compiled in a child first: its crash refuses the module, nothing more."""
    decider = _decider([OPS_SHELL], "embedded")
    await decider.start()
    try:
        with pytest.raises(InvalidArgument, match="crashed"):
            await decider.check(RegoRules(CRASHES_REGO_CPP))
        assert (await decider.decide(ALICE, SHELL)).allowed
    finally:
        await decider.close()


@pytest.mark.asyncio
async def test_a_stored_module_that_crashes_the_embedded_engine_denies_everything() -> None:
    """Loading never compiles an unproven module in process: the service stays up, and denies."""
    crash = Policy("p-c", "crash", "", RegoRules(CRASHES_REGO_CPP), 1, NOW, NOW)
    decider = _decider([OPS_SHELL, crash], "embedded")
    await decider.start()
    try:
        decision = await decider.decide(ALICE, SHELL)
    finally:
        await decider.close()
    assert not decision.allowed
    assert "crashed" in decision.reasons[0].message
