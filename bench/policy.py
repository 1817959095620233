"""Benchmark of policy decisions: 1,000 policies over 10,000 targets, on each engine.

For the embedded engine (rego-cpp), OPA's Go engine in process, and an OPA server over HTTP (the
REST test fixture of policy/testing.py, backed by OPA's Go engine), it measures
`PolicyDecider.decide` one request at a time: latency p50/p99, decisions per second, and the
latency of explanations. Baselines measured in the same run: a Python dict lookup, the same
decider on a no-op engine (the decider's own cost), and the cheapest call into rego-cpp (a
constant query with a small input). Results are printed as ratios against them.

Goals for the embedded engine: p50 decision <= 200 us, explanation <= 5 ms.

Run from the repository root: `python bench/policy.py [--decisions N] [--engines embedded,opa]`.
Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

# Runnable as a plain script from the repository root: make the project and gen/ importable.
_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT / "gen", _ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import regopy  # noqa: E402

from mrzap.testing import FixedClock  # noqa: E402
from policy._compile import Bundle  # noqa: E402
from policy._decider import PolicyDecider  # noqa: E402
from policy._engine import PolicyEngine, engine_from_spec  # noqa: E402
from policy._model import (  # noqa: E402
    Decision,
    Destination,
    KubernetesRules,
    OrganizationControlsRules,
    Policy,
    PolicyRules,
    Principal,
    ProxyRules,
    RegoRules,
    RegoTestResult,
    SessionRecordingRules,
    SubjectSelector,
    TargetAccess,
    TargetConnectRules,
    TargetSelector,
    Verb,
)
from policy.testing import OpaTestServer, StaticPolicies  # noqa: E402

NOW = 1_800_000_000.0
TARGETS = 10_000
ENVIRONMENTS = 100
POLICIES = 1_000
GROUPS = 50
USERS = ("root", "ubuntu", "deploy", "postgres")

CUSTOM = """\
package mrzap.custom.bench

import rego.v1

deny contains "contractors may not use production" if {
	"contractors" in input.principal.groups
	input.target_access.environment_id == "env-0"
}
"""


def _environment(target: int) -> str:
    return f"env-{target % ENVIRONMENTS}"


def world(rng: random.Random) -> list[Policy]:
    """1,000 policies of every kind over 10,000 targets in 100 environments."""
    policies: list[Policy] = []

    def add(rules: PolicyRules) -> None:
        index = len(policies)
        policies.append(Policy(f"p-{index:04d}", f"policy {index}", "", rules, 1, NOW, NOW))

    def subjects() -> SubjectSelector:
        return SubjectSelector(
            user_emails=tuple(f"user{rng.randrange(500)}@example.com" for _ in range(3)),
            groups=(f"group-{rng.randrange(GROUPS)}",),
        )

    def targets() -> TargetSelector:
        if rng.random() < 0.5:
            return TargetSelector(environment_ids=(f"env-{rng.randrange(ENVIRONMENTS)}",))
        return TargetSelector(target_ids=tuple(f"t-{rng.randrange(TARGETS)}" for _ in range(20)))

    add(OrganizationControlsRules(True, 3600, 8 * 3600))
    add(RegoRules(CUSTOM))
    while len(policies) < POLICIES:
        kind = rng.random()
        if kind < 0.7:
            verbs = (Verb.SHELL, Verb.EXEC) if rng.random() < 0.5 else (Verb.SHELL,)
            add(TargetConnectRules(subjects(), targets(), tuple(rng.sample(USERS, 2)), verbs, 3600))
        elif kind < 0.8:
            destinations = (Destination("db.internal", 5432),)
            add(ProxyRules(subjects(), targets(), destinations, ("postgres",)))
        elif kind < 0.9:
            add(KubernetesRules(subjects(), targets(), ("viewer",), ("system:viewers",)))
        else:
            add(SessionRecordingRules(subjects(), targets(), rng.random() < 0.5))
    return policies


def requests(rng: random.Random, count: int) -> list[tuple[Principal, TargetAccess]]:
    """Random shell requests by users in a few groups, about one in three allowed."""
    found = []
    for _ in range(count):
        target = rng.randrange(TARGETS)
        user = rng.randrange(500)
        principal = Principal(
            user_id=f"u-{user}",
            issuer="https://idp.example.com",
            subject=f"s-{user}",
            email=f"user{user}@example.com",
            groups=tuple(f"group-{rng.randrange(GROUPS)}" for _ in range(3)),
            mfa_verified_at=NOW - 60,
        )
        access = TargetAccess(f"t-{target}", _environment(target), Verb.SHELL, rng.choice(USERS))
        found.append((principal, access))
    return found


class NoOpEngine:
    """An engine that answers at once: the decider's own cost, without any Rego."""

    name = "no-op"
    _ANSWER: Mapping[str, Any] = {
        "allowed": True,
        "reasons": [{"policy_id": "p", "policy_name": "p", "effect": "allow", "message": "ok"}],
        "policy_ids": ["p"],
        "max_session_duration": 3600,
        "record_input": False,
    }

    async def load(self, bundle: Bundle) -> None:
        """Nothing to load."""

    async def evaluate(self, document: Mapping[str, Any]) -> Any:  # noqa: ANN401 - JSON
        """A fixed allow."""
        return self._ANSWER

    async def check_module(self, module: str, package: str) -> None:
        """Nothing to check."""

    async def run_tests(self, module: str, package: str) -> list[RegoTestResult]:
        """No tests."""
        return []

    async def close(self) -> None:
        """Nothing to release."""


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _time_calls(
    call: Callable[[Principal, TargetAccess], Awaitable[Decision]],
    cases: list[tuple[Principal, TargetAccess]],
) -> tuple[list[float], float, list[bool]]:
    """Per-call latencies (seconds), calls per second over the run, and which were allowed."""
    latencies = []
    allowed = []
    started = time.perf_counter()
    for principal, access in cases:
        before = time.perf_counter()
        decision = await call(principal, access)
        latencies.append(time.perf_counter() - before)
        allowed.append(decision.allowed)
    return latencies, len(cases) / (time.perf_counter() - started), allowed


def _dict_lookup_s(rounds: int = 200_000) -> float:
    table = {f"t-{i}": i for i in range(TARGETS)}
    keys = [f"t-{i}" for i in range(0, TARGETS, 7)]
    started = time.perf_counter()
    for index in range(rounds):
        table.get(keys[index % len(keys)])
    return (time.perf_counter() - started) / rounds


def _regopy_floor_s(rounds: int = 2_000) -> float:
    """The cheapest evaluation on rego-cpp: a constant query with a principal-sized input."""
    interpreter = regopy.Interpreter()
    plan = interpreter.build("x := 1")
    document = {"principal": {"user_id": "u-1", "groups": ["a", "b"]}, "context": {"now": NOW}}
    samples = []
    for _ in range(rounds):
        before = time.perf_counter()
        interpreter.set_input(document)
        interpreter.query_bundle(plan)
        samples.append(time.perf_counter() - before)
    return statistics.median(samples)


async def bench_engine(
    label: str,
    engine: PolicyEngine,
    policies: list[Policy],
    cases: list[tuple[Principal, TargetAccess]],
    explain_cases: list[tuple[Principal, TargetAccess]],
) -> dict[str, float]:
    """Load, decide and explain on one engine."""
    decider = PolicyDecider(
        StaticPolicies(policies), engine, FixedClock(NOW), refresh_interval=3600
    )
    started = time.perf_counter()
    await decider.start()
    load_s = time.perf_counter() - started
    try:
        warm = cases[: min(50, len(cases))]
        await _time_calls(decider.decide, warm)  # warm-up
        latencies, rate, allowed = await _time_calls(decider.decide, cases)

        async def explain(principal: Principal, access: TargetAccess) -> Decision:
            return await decider.decide(principal, access, explain=True)

        explains, _, _ = await _time_calls(explain, explain_cases)
    finally:
        await decider.close()
    allowed_latencies = [t for t, a in zip(latencies, allowed, strict=True) if a]
    result = {
        "load_ms": load_s * 1e3,
        "p50_us": _percentile(latencies, 0.5) * 1e6,
        "p99_us": _percentile(latencies, 0.99) * 1e6,
        "per_s": rate,
        "explain_p50_ms": _percentile(explains, 0.5) * 1e3,
        "explain_p99_ms": _percentile(explains, 0.99) * 1e3,
        "allowed_p50_us": _percentile(allowed_latencies, 0.5) * 1e6 if allowed_latencies else 0.0,
    }
    print(
        f"{label:<12} load {result['load_ms']:7.1f} ms | decide p50 {result['p50_us']:8.1f} us"
        f"  p99 {result['p99_us']:8.1f} us  {result['per_s']:8.0f}/s"
        f" | explain p50 {result['explain_p50_ms']:6.2f} ms  p99 {result['explain_p99_ms']:6.2f} ms"
        f" | {sum(allowed)}/{len(allowed)} allowed, p50 of those {result['allowed_p50_us']:.0f} us",
        flush=True,
    )
    return result


async def main(decisions: int, explanations: int, engines: list[str]) -> None:
    """Run every benchmark and print the ratios."""
    rng = random.Random(5)
    policies = world(rng)
    cases = requests(rng, decisions)
    explain_cases = requests(rng, explanations)
    print(
        f"{len(policies)} policies over {TARGETS} targets in {ENVIRONMENTS} environments; "
        f"{decisions} decisions and {explanations} explanations per engine\n"
    )
    lookup = _dict_lookup_s()
    floor = _regopy_floor_s()
    noop = await bench_engine("no-op", NoOpEngine(), policies, cases, explain_cases[:50])
    results: dict[str, dict[str, float]] = {}
    server: OpaTestServer | None = None
    try:
        for name in engines:
            if name == "opa-server":
                server = OpaTestServer()
                await server.start()
                engine = engine_from_spec(server.spec)
            else:
                engine = engine_from_spec(name)
            results[name] = await bench_engine(name, engine, policies, cases, explain_cases)
    finally:
        if server is not None:
            await server.stop()
    print("\nbaselines (same run):")
    print(f"  dict lookup                  {lookup * 1e6:8.3f} us")
    print(f"  rego-cpp constant query      {floor * 1e6:8.1f} us (input of 7 values)")
    print(f"  decider on a no-op engine    {noop['p50_us']:8.1f} us p50")
    print("\nratios of p50 decision latency:")
    for name, result in results.items():
        print(
            f"  {name:<12} {result['p50_us'] / lookup / 1e6:9.0f}x dict lookup"
            f"  {result['p50_us'] / floor / 1e6:6.1f}x rego-cpp constant query"
            f"  {result['p50_us'] / noop['p50_us']:6.1f}x no-op decider"
        )
    embedded = results.get("embedded")
    if embedded is not None:
        print(
            f"\nembedded goals: p50 decision {embedded['p50_us']:.0f} us (goal <= 200 us), "
            f"explain p50 {embedded['explain_p50_ms']:.2f} ms (goal <= 5 ms)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--explanations", type=int, default=200)
    parser.add_argument("--engines", default="embedded,opa,opa-server")
    args = parser.parse_args()
    asyncio.run(main(args.decisions, args.explanations, args.engines.split(",")))
