"""Decisions: the stored policies compiled onto an engine, asked about one request at a time.

`PolicyDecider.decide` builds the engine input (policy/_compile.py), evaluates the shipped decision
module and turns its answer into a `Decision`. It fails closed: if the engine is down, the
policies could not be loaded, or the answer is malformed, the request is denied with a reason
saying so, and the failure is logged. The reasons name policies by id and name and say what
matched; they never hold secrets.

The decider reloads after changes made through its own process (`reload`), and checks the store's
change counter at most every `refresh_interval` seconds before deciding, so changes made through
another process sharing the database take effect within that time.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from mrzap.clock import Clock
from mrzap.errors import InvalidArgument, MrzapError, Unavailable

from ._compile import DEFAULT_SESSION_DURATION, CompiledPolicies, custom_package
from ._engine import PolicyEngine
from ._model import (
    ActiveAccess,
    ApiCall,
    Decision,
    Effect,
    JustInTimeRules,
    KubernetesRules,
    OrganizationControlsRules,
    Policy,
    PolicyKind,
    PolicyRules,
    Principal,
    ProxyRules,
    Reason,
    RegoRules,
    RegoTestResult,
    TargetAccess,
    TargetConnectRules,
    Verb,
)

__all__ = ["PolicyDecider", "PolicySource"]

_log = logging.getLogger(__name__)

_EFFECT_ORDER = {Effect.DENY: 0, Effect.ALLOW: 1, Effect.NOT_APPLICABLE: 2}
_CONNECT_VERBS = frozenset({Verb.SHELL, Verb.EXEC, Verb.FILE_TRANSFER})
_GIVABLE_KINDS = frozenset({PolicyKind.TARGET_CONNECT, PolicyKind.KUBERNETES, PolicyKind.PROXY})


class PolicySource(Protocol):
    """Where the decider reads policies: `PolicyStore`, or a fixed set in tests."""

    async def revision(self) -> int:
        """A counter that changes whenever the policies or the JIT access change."""
        ...

    async def all_current(self) -> list[Policy]:
        """Every live policy at its current version."""
        ...


class PolicyDecider:
    """Decides requests under the organisation's current policies."""

    def __init__(
        self,
        store: PolicySource,
        engine: PolicyEngine,
        clock: Clock,
        active_access: Callable[[], Awaitable[Sequence[ActiveAccess]]] | None = None,
        *,
        refresh_interval: float = 1.0,
        default_session_duration: float = DEFAULT_SESSION_DURATION,
    ) -> None:
        self._store = store
        self._engine = engine
        self._clock = clock
        self._active_access = active_access
        self._refresh_interval = refresh_interval
        self._default_session_duration = default_session_duration
        self._compiled: CompiledPolicies | None = None
        self._packages: dict[str, str] = {}
        self._kinds: dict[str, PolicyKind] = {}
        self._revision = -1
        self._checked_at = float("-inf")
        self._broken: str | None = "the policies have not been loaded yet"
        self._lock = asyncio.Lock()

    @property
    def engine(self) -> PolicyEngine:
        """The engine decisions are made on."""
        return self._engine

    async def start(self) -> None:
        """Load the policies for the first time; call it before serving."""
        await self.reload()

    async def reload(self) -> None:
        """Compile the current policies and JIT access and load them onto the engine.

        A bundle the engine refuses leaves every decision denied (with the engine's message) until
        a later reload succeeds: deciding on policies older than the stored ones could allow what
        an administrator has just taken away.
        """
        async with self._lock:
            revision = await self._store.revision()
            policies = await self._store.all_current()
            active = list(await self._active_access()) if self._active_access else []
            compiled = CompiledPolicies(
                policies, active, default_session_duration=self._default_session_duration
            )
            try:
                await self._engine.load(compiled.bundle)
            except MrzapError as error:
                self._broken = f"the policies could not be loaded: {error.message}"
                _log.error("policy engine %s refused the policies: %s", self._engine.name, error)
            else:
                self._broken = None
            self._compiled = compiled
            self._packages = {
                custom_package(p.rules.module): p.id
                for p in policies
                if isinstance(p.rules, RegoRules) and _has_package(p.rules.module)
            }
            self._kinds = {p.id: p.kind for p in policies}
            self._revision = revision
            self._checked_at = time.monotonic()

    async def _refresh(self) -> None:
        if time.monotonic() - self._checked_at < self._refresh_interval:
            return
        self._checked_at = time.monotonic()
        try:
            revision = await self._store.revision()
        except Exception as error:  # the database is down: keep deciding on what is loaded
            _log.warning("cannot read the policy revision, deciding on loaded policies: %s", error)
            return
        if revision != self._revision:
            await self.reload()

    async def decide(
        self, principal: Principal, action: TargetAccess | ApiCall, *, explain: bool = False
    ) -> Decision:
        """Decide (or with `explain`, explain) one request; never raises for engine failures."""
        decision_id = str(uuid.uuid4())
        now = self._clock.now()
        try:
            await self._refresh()
            compiled = self._compiled
            if self._broken is not None or compiled is None:
                raise Unavailable(self._broken or "no policies are loaded")
            document = compiled.engine_input(principal, action, now, explain=explain)
            raw = await self._engine.evaluate(document)
            return _decision(decision_id, raw, action, now)
        except Exception as error:
            message = error.message if isinstance(error, MrzapError) else repr(error)
            _log.error(
                "decision %s denied because the policy engine %s failed: %s",
                decision_id,
                self._engine.name,
                message,
            )
            return Decision(
                decision_id=decision_id,
                allowed=False,
                reasons=(
                    Reason("", "", Effect.DENY, f"the policy engine is unavailable: {message}"),
                ),
                policy_ids=(),
                max_session_duration=0.0,
                record_input=False,
                record_output=isinstance(action, TargetAccess),
                decided_at=now,
            )

    async def check(self, rules: PolicyRules, *, policy_id: str = "") -> list[RegoTestResult]:
        """Validate rules before they are stored (as policy `policy_id` when it is an update).

        InvalidArgument with a clear message (for Rego, the engine's) if they are invalid;
        Unavailable if the engine cannot be reached. For custom Rego, the results of its
        `test_` rules (a failing test does not make the module invalid).
        """
        if not isinstance(rules, RegoRules):
            self._check_typed(rules)
            return []
        package = custom_package(rules.module)
        owner = self._packages.get(package)
        if owner is not None and owner != policy_id:
            raise InvalidArgument(
                f"package {package} is used by another custom policy ({owner}): pick another name"
            )
        await self._engine.check_module(rules.module, package)
        return await self._engine.run_tests(rules.module, package)

    def _check_typed(self, rules: PolicyRules) -> None:
        durations: list[float] = []
        if isinstance(rules, TargetConnectRules):
            wrong = [verb.name for verb in rules.verbs if verb not in _CONNECT_VERBS]
            if wrong:
                raise InvalidArgument(
                    f"a target connect policy allows SHELL, EXEC and FILE_TRANSFER, not {wrong}"
                )
            durations.append(rules.max_session_duration)
        elif isinstance(rules, KubernetesRules):
            durations.append(rules.max_session_duration)
        elif isinstance(rules, ProxyRules):
            for destination in rules.destinations:
                if not destination.host or not 0 < destination.port < 65536:
                    raise InvalidArgument(
                        f"destination {destination.host}:{destination.port} needs a host and a "
                        "port from 1 to 65535"
                    )
            durations.append(rules.max_session_duration)
        elif isinstance(rules, JustInTimeRules):
            for given in rules.policy_ids:
                if self._kinds.get(given) not in _GIVABLE_KINDS:
                    raise InvalidArgument(
                        f"{given!r} is not a target connect, Kubernetes or proxy policy: a "
                        "just-in-time policy can only give the access of those"
                    )
            durations.append(rules.max_duration)
        elif isinstance(rules, OrganizationControlsRules):
            durations += [rules.mfa_window, rules.max_session_ttl]
        if any(d < 0 for d in durations):
            raise InvalidArgument("durations cannot be negative")

    async def close(self) -> None:
        """Release the engine."""
        await self._engine.close()


def _has_package(module: str) -> bool:
    try:
        custom_package(module)
    except InvalidArgument:
        return False
    return True


def _decision(decision_id: str, raw: Any, action: TargetAccess | ApiCall, now: float) -> Decision:  # noqa: ANN401
    """The engine's answer as a Decision; Unavailable if it is not what authz.rego returns."""
    if not isinstance(raw, dict):
        raise Unavailable("the policy engine gave a malformed decision")
    try:
        reasons = tuple(
            sorted(
                (
                    Reason(
                        str(item["policy_id"]),
                        str(item["policy_name"]),
                        Effect(item["effect"]),
                        str(item["message"]),
                    )
                    for item in raw["reasons"]
                ),
                key=lambda r: (_EFFECT_ORDER[r.effect], r.policy_name, r.policy_id, r.message),
            )
        )
        policy_ids = tuple(sorted(str(policy_id) for policy_id in raw["policy_ids"]))
        duration = float(raw["max_session_duration"])
        record_input = raw["record_input"] is True
        stated = raw["allowed"]
    except (KeyError, TypeError, ValueError) as error:
        raise Unavailable(f"the policy engine gave a malformed decision ({error})") from None
    # Belt and braces: an allow needs an allowing reason and no denying one, whatever the answer.
    effects = {reason.effect for reason in reasons}
    allowed = stated is True and Effect.ALLOW in effects and Effect.DENY not in effects
    target = isinstance(action, TargetAccess)
    return Decision(
        decision_id=decision_id,
        allowed=allowed,
        reasons=reasons,
        policy_ids=policy_ids if allowed else (),
        max_session_duration=duration if allowed and target else 0.0,
        record_input=record_input and target,
        record_output=target,
        decided_at=now,
    )
