"""Registration and the lifecycle of targets: the registry role's domain logic.

Flow 3 of DESIGN.md: a registration key (or an administrator) creates a target in ACTIVATION and a
single-use activation token; the agent spends the token with its public key and the target becomes
REGISTERED; the broker's control stream reports it ONLINE, its keepalives and its end (OFFLINE);
`sweep` applies the time-based transitions (OFFLINE after silence, TERMINATED after the
environment's cleanup timeout). Every transition is in the target's state history and the audit
log, written in one transaction with the change; every refusal is audited with its reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from audit import Actor, AuditLog, Outcome
from mrzap.clock import Clock, SystemClock
from mrzap.errors import (
    FailedPrecondition,
    InvalidArgument,
    MrzapError,
    NotFound,
    Unauthenticated,
)
from mrzap.paging import decode_page_token, encode_page_token, page_limit

from . import _secrets
from ._config import RegistryConfig
from ._store import (
    ActivationToken,
    Environment,
    RegistrationKey,
    RegistryStore,
    StateChange,
    Target,
    TargetFilter,
    TargetState,
    new_id,
)
from ._validation import (
    MAX_DESCRIPTION_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SHORT_LENGTH,
    clean_text,
    duration_words,
    is_uuid,
    loggable,
    public_key,
    timeout,
    utc,
)

__all__ = [
    "DEFAULT_ENVIRONMENT",
    "AgentRegistration",
    "IssuedToken",
    "NewSecret",
    "Registered",
    "Registry",
    "SweepResult",
]

#: The environment that exists from the start and takes targets nobody placed elsewhere.
DEFAULT_ENVIRONMENT = "default"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: How long spent and expired activation tokens are kept, so presenting one again gets a clear
#: answer ("used already") rather than "not valid".
TOKEN_RETENTION_S = 86400.0
_NO_STATE = 0
# Everything listed pages by (name, id).
_Item = TypeVar("_Item", Environment, RegistrationKey, Target)


@dataclasses.dataclass(frozen=True)
class NewSecret:
    """A registration key with its secret, which is shown this once."""

    key: RegistrationKey
    secret: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class IssuedToken:
    """A new activation token and the target (in ACTIVATION) it registers."""

    token: str = dataclasses.field(repr=False)
    expires_at: float
    target: Target


@dataclasses.dataclass(frozen=True)
class AgentRegistration:
    """What an agent sends with its activation token."""

    public_key: bytes
    hostname: str = ""
    agent_version: str = ""
    name: str = ""
    region: str = ""


@dataclasses.dataclass(frozen=True)
class Registered:
    """A registered target and the organisation it belongs to."""

    target: Target
    org_id: str


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What one sweep changed (target ids)."""

    offline: tuple[str, ...] = ()
    terminated: tuple[str, ...] = ()
    abandoned: tuple[str, ...] = ()
    """Targets removed while still in ACTIVATION because their token expired unused."""


def _page_size(page_size: int) -> int:
    return page_limit(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _page(found: list[_Item], limit: int) -> tuple[list[_Item], str]:
    """The first `limit` of `found` (fetched with one extra) and the next page's token."""
    page = found[:limit]
    more = len(found) > limit
    return page, encode_page_token((page[-1].name, page[-1].id)) if more else ""


def _shown(value: str) -> str:
    return repr(loggable(value, MAX_SHORT_LENGTH))


class Registry:
    """Environments, registration keys, registration, and the target lifecycle.

    It also is the broker's `TargetDirectory`: `agent_public_key`, `agent_connected`,
    `agents_seen`, `agent_disconnected` and `agent_refused`.
    """

    def __init__(
        self,
        store: RegistryStore,
        audit: AuditLog,
        config: RegistryConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._config = config or RegistryConfig()
        self._clock = clock or SystemClock()

    @property
    def config(self) -> RegistryConfig:
        """The role's configuration."""
        return self._config

    async def org_id(self) -> str:
        """The organisation's id, which grants name."""
        return await self._store.org_id()

    # Environments.

    def cleanup_timeout(self, environment: Environment) -> float:
        """How long a target of `environment` may stay OFFLINE before it is TERMINATED."""
        configured = environment.offline_cleanup_timeout_s
        return self._config.offline_cleanup_timeout_s if configured is None else configured

    async def create_environment(
        self, name: str, description: str = "", offline_cleanup_timeout_s: float = 0
    ) -> Environment:
        """A new environment; its name must be unique. A zero timeout means the default."""
        environment = Environment(
            id=new_id(),
            name=clean_text(name, "the environment name", MAX_NAME_LENGTH, required=True),
            description=clean_text(description, "the description", MAX_DESCRIPTION_LENGTH),
            offline_cleanup_timeout_s=timeout(offline_cleanup_timeout_s, "offline_cleanup_timeout"),
            created_at=self._clock.now(),
        )
        await self._store.add_environment(environment)
        return environment

    async def list_environments(
        self, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Environment], str]:
        """A page of environments ordered by name, and the next page's token."""
        limit = _page_size(page_size)
        return _page(
            await self._store.list_environments(decode_page_token(page_token), limit + 1), limit
        )

    async def default_environment(self) -> Environment:
        """The environment targets join when none is named."""
        environment = await self._store.environment_by_name(DEFAULT_ENVIRONMENT)
        if environment is None:
            raise FailedPrecondition(
                f"the {DEFAULT_ENVIRONMENT!r} environment is missing: name an environment"
            )
        return environment

    async def get_environment(self, environment_id: str) -> Environment:
        """The environment with this id; NotFound if there is none."""
        environment = None
        if is_uuid(environment_id):
            environment = await self._store.get_environment(environment_id)
        if environment is None:
            raise NotFound(f"no environment with id {_shown(environment_id)}")
        return environment

    async def delete_environment(self, environment_id: str) -> None:
        """Delete an environment that has no targets and no live registration keys."""
        environment = await self.get_environment(environment_id)
        if environment.name == DEFAULT_ENVIRONMENT:
            raise FailedPrecondition("the default environment cannot be deleted")
        try:
            async with self._store.transaction() as s:
                count, names, keys = await self._store.environment_members(
                    s, environment.id, limit=5
                )
                if count:
                    listed = ", ".join(repr(name) for name in names)
                    more = ", ..." if count > len(names) else ""
                    raise FailedPrecondition(
                        f"environment {environment.name!r} still has {count} target(s) "
                        f"({listed}{more}): delete them first"
                    )
                if keys:
                    raise FailedPrecondition(
                        f"environment {environment.name!r} still has registration keys "
                        f"({', '.join(repr(key) for key in keys)}): revoke them first"
                    )
                await self._store.delete_environment(s, environment.id)
        except IntegrityError:
            # A target or key joined the environment between the check and the delete.
            raise FailedPrecondition(
                f"environment {environment.name!r} gained a target or a key: try again"
            ) from None

    # Registration keys.

    async def create_registration_key(
        self, name: str, environment_id: str = "", ttl_s: float = 0
    ) -> NewSecret:
        """A new registration key for an environment (the default one when none is named)."""
        clean_name = clean_text(name, "the key name", MAX_NAME_LENGTH, required=True)
        lifetime = timeout(ttl_s, "ttl")
        environment = await (
            self.get_environment(environment_id) if environment_id else self.default_environment()
        )
        now = self._clock.now()
        key_id = _secrets.new_registration_key_id()
        secret = _secrets.new_registration_key_secret(key_id)
        key = RegistrationKey(
            id=key_id,
            name=clean_name,
            environment_id=environment.id,
            created_at=now,
            rotated_at=None,
            expires_at=None if lifetime is None else now + lifetime,
            last_used_at=None,
            revoked_at=None,
            secret_hash=_secrets.hash_secret(secret),
        )
        await self._store.add_registration_key(key)
        return NewSecret(key, secret)

    async def list_registration_keys(
        self, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[RegistrationKey], str]:
        """A page of the keys that are not revoked, ordered by name, and the next page's token."""
        limit = _page_size(page_size)
        return _page(
            await self._store.list_registration_keys(decode_page_token(page_token), limit + 1),
            limit,
        )

    async def rotate_registration_key(self, key_id: str) -> NewSecret:
        """Give a key a new secret; the old one stops working at once."""
        key = await self._live_key(key_id)
        secret = _secrets.new_registration_key_secret(key.id)
        now = self._clock.now()
        if not await self._store.rotate_registration_key(key.id, _secrets.hash_secret(secret), now):
            raise FailedPrecondition(f"registration key {key.id} was revoked meanwhile")
        key = dataclasses.replace(key, rotated_at=now, secret_hash=_secrets.hash_secret(secret))
        return NewSecret(key, secret)

    async def revoke_registration_key(self, key_id: str) -> None:
        """Make a key unusable at once; revoking a revoked key changes nothing."""
        key = await self._store.get_registration_key(key_id)
        if key is None:
            raise NotFound(f"no registration key with id {_shown(key_id)}")
        await self._store.revoke_registration_key(key.id, self._clock.now())

    async def _live_key(self, key_id: str) -> RegistrationKey:
        key = await self._store.get_registration_key(key_id)
        if key is None:
            raise NotFound(f"no registration key with id {_shown(key_id)}")
        if key.revoked_at is not None:
            raise FailedPrecondition(f"registration key {key.id} was revoked: create a new one")
        return key

    # Activation and registration.

    async def create_activation_token(
        self,
        *,
        registration_key: str | None,
        target_name: str = "",
        environment_id: str = "",
        actor: Actor | None = None,
    ) -> IssuedToken:
        """A single-use activation token and its new target, in ACTIVATION.

        With `registration_key` (a secret), the key's environment applies; without one, the
        caller is an administrator (already authorised; `actor` names them) and may choose the
        environment. Refusals are audited.
        """
        key: RegistrationKey | None = None
        try:
            name = clean_text(target_name, "the target name", MAX_NAME_LENGTH)
            if registration_key is not None:
                key = await self._usable_key(registration_key)
                environment_id = key.environment_id
            elif environment_id:
                environment_id = (await self.get_environment(environment_id)).id
            else:
                environment_id = (await self.default_environment()).id
        except MrzapError as error:
            raise await self._refused(error, "", actor) from None
        now = self._clock.now()
        token = _secrets.new_activation_token()
        expires_at = now + self._config.activation_token_lifetime_s
        target = Target(
            id=new_id(),
            name=name,
            environment_id=environment_id,
            state=TargetState.ACTIVATION,
            state_changed_at=now,
            public_key=None,
            hostname="",
            agent_version="",
            region="",
            broker_id="",
            created_at=now,
            registered_at=None,
            last_seen_at=None,
        )
        issuer = "an administrator" if key is None else f"registration key {key.id}"
        reason = f"activation token issued by {issuer}, valid until {utc(expires_at)}"
        async with self._store.transaction() as s:
            await self._store.add_target(s, target, reason)
            await self._store.add_activation_token(
                s,
                ActivationToken(
                    token_hash=_secrets.hash_secret(token),
                    target_id=target.id,
                    registration_key_id=None if key is None else key.id,
                    created_at=now,
                    expires_at=expires_at,
                    used_at=None,
                ),
            )
            if key is not None:
                await self._store.touch_registration_key(s, key.id, now)
            await self._audit.record_target(
                target.id,
                TargetState.ACTIVATION.value,
                reason,
                outcome=Outcome.ALLOWED,
                actor=actor,
                session=s,
            )
        return IssuedToken(token, expires_at, target)

    async def _usable_key(self, secret: str) -> RegistrationKey:
        key_id = _secrets.parse_registration_key(secret)
        if key_id is None:
            kind = _secrets.secret_kind(secret)
            if kind and not secret.startswith(_secrets.REGISTRATION_KEY_PREFIX):
                raise InvalidArgument(f"this is {kind}, not a registration key")
            raise Unauthenticated("the registration key is not valid")
        key = await self._store.get_registration_key(key_id)
        # The hash is checked first, so only the key's holder learns whether it was revoked.
        if key is None:
            raise Unauthenticated("the registration key is not valid")
        if not _secrets.hashes_match(key.secret_hash, secret):
            if key.rotated_at is not None:
                raise Unauthenticated(
                    f"registration key {key.id} was rotated: its old secret no longer works"
                )
            raise Unauthenticated("the registration key is not valid")
        if key.revoked_at is not None:
            raise Unauthenticated(f"registration key {key.id} was revoked")
        if key.expires_at is not None and self._clock.now() >= key.expires_at:
            raise Unauthenticated(f"registration key {key.id} expired at {utc(key.expires_at)}")
        return key

    async def register_agent(
        self, activation_token: str, registration: AgentRegistration, actor: Actor | None = None
    ) -> Registered:
        """Spend an activation token to register the agent's key; the target becomes REGISTERED.

        The token is spent whether or not registration succeeds. On a refusal nothing is left
        half-registered: a target still in ACTIVATION is removed with its spent token, and the
        refusal is audited, all in one transaction.
        """
        if not _secrets.is_activation_token(activation_token):
            kind = _secrets.secret_kind(activation_token)
            error: MrzapError = (
                InvalidArgument(f"this is {kind}, not an activation token")
                if kind and not activation_token.startswith(_secrets.ACTIVATION_TOKEN_PREFIX)
                else Unauthenticated("the activation token is not valid")
            )
            raise await self._refused(error, "", actor)
        token_hash = _secrets.hash_secret(activation_token)
        now = self._clock.now()
        async with self._store.transaction() as s:
            spent = await self._store.spend_activation_token(s, token_hash, now)
            token = await self._store.get_activation_token(s, token_hash)
            target = None
            if token is not None and token.target_id is not None:
                target = await self._store.get_target(token.target_id, s)
            problem = _token_problem(token, spent, target, now)
            registered = None
            if problem is None and target is not None:
                try:
                    registered = await self._register(s, target, registration, actor, now)
                except MrzapError as error:
                    problem = type(error)(f"{error.message} (the activation token is spent)")
            if problem is not None:
                target_id = "" if target is None else target.id
                if spent and target is not None and target.state is TargetState.ACTIVATION:
                    await self._store.delete_target(s, target.id, only_in=TargetState.ACTIVATION)
                await self._refused(problem, target_id, actor, session=s)
        if problem is not None or registered is None:
            raise problem or Unauthenticated("the activation token is not valid")
        return Registered(registered, await self._store.org_id())

    async def _register(
        self,
        s: AsyncSession,
        target: Target,
        registration: AgentRegistration,
        actor: Actor | None,
        now: float,
    ) -> Target:
        key = public_key(registration.public_key)
        hostname = clean_text(registration.hostname, "the hostname", MAX_NAME_LENGTH)
        version = clean_text(registration.agent_version, "the agent version", MAX_SHORT_LENGTH)
        region = clean_text(registration.region, "the region", MAX_SHORT_LENGTH)
        name = clean_text(registration.name, "the target name", MAX_NAME_LENGTH)
        name = name or target.name or hostname
        if not name:
            raise InvalidArgument("the target needs a name: send a name or a hostname")
        reason = f"agent {version or '(unknown version)'} on host {hostname!r} registered"
        values: dict[str, object] = {
            "public_key": key,
            "hostname": hostname,
            "agent_version": version,
            "region": region,
            "name": name,
            "registered_at": now,
        }
        if not await self._store.transition(
            s,
            target.id,
            TargetState.REGISTERED,
            now,
            reason,
            from_states={TargetState.ACTIVATION},
            values=values,
        ):
            raise Unauthenticated("the target of this activation token was deleted")
        await self._audit.record_target(
            target.id,
            TargetState.REGISTERED.value,
            reason,
            outcome=Outcome.ALLOWED,
            actor=actor,
            session=s,
        )
        return dataclasses.replace(
            target,
            state=TargetState.REGISTERED,
            state_changed_at=now,
            public_key=key,
            hostname=hostname,
            agent_version=version,
            region=region,
            name=name,
            registered_at=now,
        )

    async def _refused(
        self,
        error: MrzapError,
        target_id: str,
        actor: Actor | None,
        *,
        session: AsyncSession | None = None,
    ) -> MrzapError:
        """Audit a refusal (its message holds no secret) and return the error to raise."""
        await self._audit.record_target(
            target_id,
            _NO_STATE,
            error.message,
            outcome=Outcome.DENIED,
            actor=actor,
            session=session,
        )
        return error

    # Targets.

    async def get_target(self, target_id: str) -> Target:
        """The target with this id; NotFound for an unknown, deleted or malformed id."""
        target = await self._store.get_target(target_id) if is_uuid(target_id) else None
        if target is None:
            raise NotFound(f"no target with id {_shown(target_id)}")
        return target

    async def target_history(self, target_id: str) -> tuple[Target, list[StateChange]]:
        """The target and every state it has been in, oldest first."""
        target = await self.get_target(target_id)
        return target, await self._store.state_changes(target.id)

    async def list_targets(
        self, search: TargetFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Target], str]:
        """A page of matching targets ordered by name, and the next page's token."""
        limit = _page_size(page_size)
        return _page(
            await self._store.list_targets(search, decode_page_token(page_token), limit + 1),
            limit,
        )

    async def rename_target(self, target_id: str, name: str, actor: Actor | None = None) -> Target:
        """Give a target a new name (names need not be unique)."""
        new_name = clean_text(name, "the target name", MAX_NAME_LENGTH, required=True)
        target = await self.get_target(target_id)
        async with self._store.transaction() as s:
            if not await self._store.update_target(s, target.id, name=new_name):
                raise NotFound(f"no target with id {_shown(target_id)}")
            await self._audit.record_target(
                target.id,
                _NO_STATE,
                f"renamed from {target.name!r} to {new_name!r}",
                outcome=Outcome.ALLOWED,
                actor=actor,
                session=s,
            )
        return dataclasses.replace(target, name=new_name)

    async def delete_target(self, target_id: str, actor: Actor | None = None) -> None:
        """Forget a target and its key: the agent can no longer authenticate."""
        target = await self.get_target(target_id)
        async with self._store.transaction() as s:
            if not await self._store.delete_target(s, target.id):
                raise NotFound(f"no target with id {_shown(target_id)}")
            await self._audit.record_target(
                target.id,
                _NO_STATE,
                f"target {target.name!r} deleted in state {target.state.name}",
                outcome=Outcome.ALLOWED,
                actor=actor,
                session=s,
            )

    # What the broker's control stream needs (the TargetDirectory protocol).

    async def agent_public_key(self, target_id: str) -> bytes:
        """The raw Ed25519 public key the target registered with; NotFound for an unknown,
        deleted or malformed id, or a target that has not registered yet."""
        target = await self.get_target(target_id)
        if target.public_key is None:
            raise NotFound(f"target {target.id} has not registered a key")
        return target.public_key

    async def agent_connected(self, target_id: str, broker_id: str, address: str) -> None:
        """The agent authenticated its control stream: the target becomes ONLINE on `broker_id`."""
        now = self._clock.now()
        reason = (
            f"control stream to broker {loggable(broker_id, MAX_NAME_LENGTH)} "
            f"from {loggable(address, MAX_NAME_LENGTH)}"
        )
        async with self._store.transaction() as s:
            moved = is_uuid(target_id) and await self._store.transition(
                s,
                target_id,
                TargetState.ONLINE,
                now,
                reason,
                # ONLINE too: an agent may reconnect (to another broker) before its old stream's
                # end is noticed; the route moves, and the old broker's report then changes nothing.
                from_states={
                    TargetState.REGISTERED,
                    TargetState.ONLINE,
                    TargetState.OFFLINE,
                    TargetState.TERMINATED,
                },
                values={"broker_id": broker_id, "last_seen_at": now},
            )
            if not moved:
                raise NotFound(f"no registered target with id {_shown(target_id)}")
            await self._audit.record_target(
                target_id,
                TargetState.ONLINE.value,
                reason,
                outcome=Outcome.ALLOWED,
                actor=Actor(address=address),
                session=s,
            )

    async def agents_seen(self, target_ids: Collection[str], when: float) -> set[str]:
        """Keepalives arrived: set last_seen (Unix seconds) for all of them in one statement.
        Returns the ids among them that no longer exist: deleted targets."""
        ids = [target_id for target_id in target_ids if is_uuid(target_id)]
        existing = await self._store.mark_seen(ids, when) if ids else set()
        return set(target_ids) - existing

    async def agent_disconnected(self, target_id: str, broker_id: str, reason: str) -> None:
        """The stream ended: an ONLINE target still routed to `broker_id` becomes OFFLINE; a
        stale report for a target now on another broker changes nothing."""
        if not is_uuid(target_id):
            return
        now = self._clock.now()
        why = f"control stream to broker {loggable(broker_id, MAX_NAME_LENGTH)} ended: "
        why += loggable(reason)
        async with self._store.transaction() as s:
            if await self._store.transition(
                s,
                target_id,
                TargetState.OFFLINE,
                now,
                why,
                from_states={TargetState.ONLINE},
                on_broker=broker_id,
            ):
                await self._audit.record_target(
                    target_id,
                    TargetState.OFFLINE.value,
                    why,
                    outcome=Outcome.ALLOWED,
                    session=s,
                )

    async def agent_refused(self, target_id: str, message: str, address: str) -> None:
        """Audit a refused agent; `target_id` may be "" or name no existing target."""
        text = loggable(message)
        known = ""
        if target_id:
            if is_uuid(target_id) and await self._store.get_target(target_id) is not None:
                known = target_id
            else:
                text += f" (it named target {_shown(target_id)}, which does not exist)"
        await self._audit.record_target(
            known, _NO_STATE, text, outcome=Outcome.DENIED, actor=Actor(address=address)
        )

    # Time-based transitions.

    async def sweep(self) -> SweepResult:
        """Apply the time-based transitions once: silent ONLINE targets become OFFLINE, long
        OFFLINE ones TERMINATED, and targets whose activation token expired unused are removed.

        Safe to run from several processes at once: each transition happens once.
        """
        now = self._clock.now()
        offline_timeout = self._config.offline_timeout_s
        offline = []
        silent_since = now - offline_timeout
        for target_id in await self._store.silent_targets(silent_since):
            reason = f"no keepalive for {duration_words(offline_timeout)}"
            if await self._transition_and_audit(
                target_id,
                TargetState.OFFLINE,
                now,
                reason,
                from_states={TargetState.ONLINE},
                last_seen_by=silent_since,
            ):
                offline.append(target_id)
        terminated = []
        default = self._config.offline_cleanup_timeout_s
        for target_id, cleanup_s in await self._store.long_offline_targets(now, default):
            reason = f"offline for longer than {duration_words(cleanup_s)}"
            if await self._transition_and_audit(
                target_id,
                TargetState.TERMINATED,
                now,
                reason,
                from_states={TargetState.OFFLINE},
                changed_before=now - cleanup_s,
            ):
                terminated.append(target_id)
        abandoned = []
        for target_id in await self._store.abandoned_activations(now):
            async with self._store.transaction() as s:
                if await self._store.delete_target(s, target_id, only_in=TargetState.ACTIVATION):
                    await self._audit.record_target(
                        target_id,
                        _NO_STATE,
                        "the activation token expired unused: target removed",
                        outcome=Outcome.ALLOWED,
                        session=s,
                    )
                    abandoned.append(target_id)
        await self._store.forget_activation_tokens(now - TOKEN_RETENTION_S)
        return SweepResult(tuple(offline), tuple(terminated), tuple(abandoned))

    async def _transition_and_audit(
        self,
        target_id: str,
        state: TargetState,
        now: float,
        reason: str,
        *,
        from_states: Collection[TargetState],
        last_seen_by: float | None = None,
        changed_before: float | None = None,
    ) -> bool:
        async with self._store.transaction() as s:
            moved = await self._store.transition(
                s,
                target_id,
                state,
                now,
                reason,
                from_states=from_states,
                last_seen_by=last_seen_by,
                changed_before=changed_before,
            )
            if moved:
                await self._audit.record_target(
                    target_id, state.value, reason, outcome=Outcome.ALLOWED, session=s
                )
            return moved


def _token_problem(
    token: ActivationToken | None, spent: bool, target: Target | None, now: float
) -> MrzapError | None:
    """Why an activation token cannot register its target, or None if it can."""
    if token is None:
        return Unauthenticated("the activation token is not valid")
    if not spent:
        used_at = token.used_at or now
        return Unauthenticated(f"the activation token was used already, at {utc(used_at)}")
    if now >= token.expires_at:
        return Unauthenticated(f"the activation token expired at {utc(token.expires_at)}")
    if target is None:
        return Unauthenticated("the target of this activation token was deleted")
    if target.state is not TargetState.ACTIVATION:
        return FailedPrecondition(f"target {target.id} is registered already")
    return None
