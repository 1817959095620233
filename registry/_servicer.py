"""The gRPC face of the registry role: converts messages and calls the domain.

`CreateActivationToken` and `RegisterAgent` are PUBLIC for the session interceptor because they
carry their own credential (a registration key, an activation token); an administrator may also
call `CreateActivationToken` with a session (or an administrator's API key) instead of a key.

`ListTargets` and `GetTarget` are open to every logged-in caller: administrators see every
target, others only those a target connect policy could let them reach (registry/_visibility.py).
A target outside a caller's view is NOT_FOUND, with the message of an unknown id, so users cannot
probe for targets they may not use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc.aio

from audit import Actor
from auth import Access, AuthService, Caller, current_caller
from bastion.policy.v1 import policy_service_pb2 as policy_pb
from bastion.registry.v1 import registry_service_pb2 as pb
from bastion.registry.v1 import registry_service_pb2_grpc as pb_grpc
from mrzap.config import IdpConfig
from mrzap.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from mrzap.rpc import bearer_token
from mrzap.timestamps import from_duration, to_duration, to_timestamp
from policy import GrantKey, principal_of

from ._domain import AgentRegistration, Registry
from ._store import (
    Environment,
    RegistrationKey,
    StateChange,
    Target,
    TargetFilter,
    TargetScope,
    TargetState,
)
from ._validation import MAX_SHORT_LENGTH, loggable
from ._visibility import TargetVisibility

__all__ = ["ACCESS", "RegistryServicer", "target_message"]

_SERVICE = "/bastion.registry.v1.RegistryService/"

#: Who may call each method of RegistryService.
ACCESS: dict[str, Access] = {
    _SERVICE + "CreateEnvironment": Access.ADMIN,
    _SERVICE + "ListEnvironments": Access.ADMIN,
    _SERVICE + "DeleteEnvironment": Access.ADMIN,
    _SERVICE + "CreateRegistrationKey": Access.ADMIN,
    _SERVICE + "ListRegistrationKeys": Access.ADMIN,
    _SERVICE + "RotateRegistrationKey": Access.ADMIN,
    _SERVICE + "RevokeRegistrationKey": Access.ADMIN,
    _SERVICE + "CreateActivationToken": Access.PUBLIC,
    _SERVICE + "RegisterAgent": Access.PUBLIC,
    # Any logged-in caller; the servicer narrows what non-administrators see.
    _SERVICE + "ListTargets": Access.USER,
    _SERVICE + "GetTarget": Access.USER,
    _SERVICE + "RenameTarget": Access.ADMIN,
    _SERVICE + "DeleteTarget": Access.ADMIN,
}

_Context = grpc.aio.ServicerContext[Any, Any]


def _state(state: TargetState) -> pb.TargetState.ValueType:
    return pb.TargetState.ValueType(state.value)


def target_message(target: Target) -> pb.Target:
    """The wire form of a target."""
    message = pb.Target(
        id=target.id,
        name=target.name,
        environment_id=target.environment_id,
        state=_state(target.state),
        public_key=target.public_key or b"",
        hostname=target.hostname,
        agent_version=target.agent_version,
        region=target.region,
        create_time=to_timestamp(target.created_at),
    )
    if target.registered_at is not None:
        message.register_time.CopyFrom(to_timestamp(target.registered_at))
    if target.last_seen_at is not None:
        message.last_seen_time.CopyFrom(to_timestamp(target.last_seen_at))
    return message


def _state_change(change: StateChange) -> pb.TargetStateChange:
    return pb.TargetStateChange(
        state=_state(change.state), time=to_timestamp(change.time), reason=change.reason
    )


def _key_message(key: RegistrationKey) -> pb.RegistrationKey:
    message = pb.RegistrationKey(
        id=key.id,
        name=key.name,
        environment_id=key.environment_id,
        create_time=to_timestamp(key.created_at),
    )
    for field, value in (
        (message.rotate_time, key.rotated_at),
        (message.expire_time, key.expires_at),
        (message.last_use_time, key.last_used_at),
    ):
        if value is not None:
            field.CopyFrom(to_timestamp(value))
    return message


def _idp_message(idp: IdpConfig) -> pb.IdpConfiguration:
    return pb.IdpConfiguration(
        issuer=idp.issuer,
        client_id=idp.client_id,
        allowed_email_domains=sorted(idp.allowed_email_domains),
        hosted_domain=idp.hosted_domain or "",
        tenant_id=idp.tenant_id or "",
        max_session_age=to_duration(idp.max_session_age_s),
    )


def _grant_key_message(key: GrantKey) -> policy_pb.GrantKey:
    return policy_pb.GrantKey(
        key_id=key.key_id, public_key=key.public_key, create_time=to_timestamp(key.created_at)
    )


def _actor(caller: Caller, context: _Context) -> Actor:
    """The audit log's record of an authenticated caller."""
    return Actor(user_id=caller.user_id, api_key_id=caller.api_key_id, address=context.peer())


def _unknown_target(target_id: str) -> str:
    """The message of `Registry.get_target` for an id it does not know, word for word."""
    return f"no target with id {loggable(target_id, MAX_SHORT_LENGTH)!r}"


def _target_filter(request: pb.ListTargetsRequest, scope: TargetScope | None) -> TargetFilter:
    states = set()
    for value in request.states:
        try:
            states.add(TargetState(value))
        except ValueError:
            raise InvalidArgument(f"{value} is not a target state to filter on") from None
    return TargetFilter(
        environment_ids=frozenset(request.environment_ids),
        states=frozenset(states),
        name=request.name,
        scope=scope,
    )


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    """RegistryService over gRPC."""

    def __init__(
        self,
        registry: Registry,
        auth: AuthService,
        grant_keys: Sequence[GrantKey],
        idp: IdpConfig,
        visibility: TargetVisibility,
    ) -> None:
        self._registry = registry
        self._visibility = visibility
        self._auth = auth
        self._grant_keys = [_grant_key_message(key) for key in grant_keys]
        self._idp = _idp_message(idp)

    def _environment_message(self, environment: Environment) -> pb.Environment:
        return pb.Environment(
            id=environment.id,
            name=environment.name,
            description=environment.description,
            offline_cleanup_timeout=to_duration(self._registry.cleanup_timeout(environment)),
            create_time=to_timestamp(environment.created_at),
        )

    async def CreateEnvironment(
        self, request: pb.CreateEnvironmentRequest, context: _Context
    ) -> pb.CreateEnvironmentResponse:
        """Add an environment (administrators only)."""
        environment = await self._registry.create_environment(
            request.name, request.description, from_duration(request.offline_cleanup_timeout)
        )
        return pb.CreateEnvironmentResponse(environment=self._environment_message(environment))

    async def ListEnvironments(
        self, request: pb.ListEnvironmentsRequest, context: _Context
    ) -> pb.ListEnvironmentsResponse:
        """A page of environments, by name."""
        environments, next_token = await self._registry.list_environments(
            request.page_size, request.page_token
        )
        return pb.ListEnvironmentsResponse(
            environments=[self._environment_message(e) for e in environments],
            next_page_token=next_token,
        )

    async def DeleteEnvironment(
        self, request: pb.DeleteEnvironmentRequest, context: _Context
    ) -> pb.DeleteEnvironmentResponse:
        """Delete an environment without targets or live keys (administrators only)."""
        await self._registry.delete_environment(request.environment_id)
        return pb.DeleteEnvironmentResponse()

    async def CreateRegistrationKey(
        self, request: pb.CreateRegistrationKeyRequest, context: _Context
    ) -> pb.CreateRegistrationKeyResponse:
        """A new registration key and its secret, shown once (administrators only)."""
        created = await self._registry.create_registration_key(
            request.name, request.environment_id, from_duration(request.ttl)
        )
        return pb.CreateRegistrationKeyResponse(
            registration_key=_key_message(created.key), secret=created.secret
        )

    async def ListRegistrationKeys(
        self, request: pb.ListRegistrationKeysRequest, context: _Context
    ) -> pb.ListRegistrationKeysResponse:
        """A page of the keys that are not revoked, without secrets (administrators only)."""
        keys, next_token = await self._registry.list_registration_keys(
            request.page_size, request.page_token
        )
        return pb.ListRegistrationKeysResponse(
            registration_keys=[_key_message(key) for key in keys], next_page_token=next_token
        )

    async def RotateRegistrationKey(
        self, request: pb.RotateRegistrationKeyRequest, context: _Context
    ) -> pb.RotateRegistrationKeyResponse:
        """A new secret for a key; the old one stops working (administrators only)."""
        rotated = await self._registry.rotate_registration_key(request.registration_key_id)
        return pb.RotateRegistrationKeyResponse(
            registration_key=_key_message(rotated.key), secret=rotated.secret
        )

    async def RevokeRegistrationKey(
        self, request: pb.RevokeRegistrationKeyRequest, context: _Context
    ) -> pb.RevokeRegistrationKeyResponse:
        """Make a key unusable (administrators only)."""
        await self._registry.revoke_registration_key(request.registration_key_id)
        return pb.RevokeRegistrationKeyResponse()

    async def CreateActivationToken(
        self, request: pb.CreateActivationTokenRequest, context: _Context
    ) -> pb.CreateActivationTokenResponse:
        """A single-use token for a new target: with a registration key, or as an administrator."""
        actor = Actor(address=context.peer())
        if not request.registration_key:
            actor = _actor(await self._administrator(context), context)
        issued = await self._registry.create_activation_token(
            registration_key=request.registration_key or None,
            target_name=request.target_name,
            environment_id=request.environment_id,
            actor=actor,
        )
        return pb.CreateActivationTokenResponse(
            activation_token=issued.token,
            expire_time=to_timestamp(issued.expires_at),
            target=target_message(issued.target),
        )

    async def _administrator(self, context: _Context) -> Caller:
        """The administrator calling (with a session or an API key), or a refusal."""
        token = bearer_token(context)
        if not token:
            raise Unauthenticated(
                "present a registration key, or log in as an administrator (`zli login`)"
            )
        caller = await self._auth.authenticate_caller(token)
        if not caller.is_admin:
            raise PermissionDenied(
                "only administrators may create activation tokens without a registration key"
            )
        return caller

    async def RegisterAgent(
        self, request: pb.RegisterAgentRequest, context: _Context
    ) -> pb.RegisterAgentResponse:
        """Spend an activation token to register an agent's key."""
        registered = await self._registry.register_agent(
            request.activation_token,
            AgentRegistration(
                public_key=request.public_key,
                hostname=request.hostname,
                agent_version=request.agent_version,
                name=request.name,
                region=request.region,
            ),
            Actor(address=context.peer()),
        )
        return pb.RegisterAgentResponse(
            target=target_message(registered.target),
            org_id=registered.org_id,
            grant_keys=self._grant_keys,
            idp=self._idp,
        )

    async def _scope(self) -> TargetScope | None:
        """The targets the caller may see; None for administrators, who see them all."""
        caller = current_caller()
        if caller.is_admin:
            return None
        return await self._visibility.scope(principal_of(caller))

    async def ListTargets(
        self, request: pb.ListTargetsRequest, context: _Context
    ) -> pb.ListTargetsResponse:
        """A page of the targets the caller may see, filtered, by name."""
        # The filter is checked before the policies are read: a bad request costs nothing.
        _target_filter(request, None)
        targets, next_token = await self._registry.list_targets(
            _target_filter(request, await self._scope()), request.page_size, request.page_token
        )
        return pb.ListTargetsResponse(
            targets=[target_message(t) for t in targets], next_page_token=next_token
        )

    async def GetTarget(
        self, request: pb.GetTargetRequest, context: _Context
    ) -> pb.GetTargetResponse:
        """One target the caller may see, and its state history."""
        target, history = await self._registry.target_history(request.target_id)
        scope = await self._scope()
        if scope is not None and not scope.covers(target):
            # The answer for an unknown id: whether the target exists is not the user's business.
            raise NotFound(_unknown_target(request.target_id))
        return pb.GetTargetResponse(
            target=target_message(target), state_changes=[_state_change(c) for c in history]
        )

    async def RenameTarget(
        self, request: pb.RenameTargetRequest, context: _Context
    ) -> pb.RenameTargetResponse:
        """Give a target a new name (administrators only)."""
        target = await self._registry.rename_target(
            request.target_id, request.name, _actor(current_caller(), context)
        )
        return pb.RenameTargetResponse(target=target_message(target))

    async def DeleteTarget(
        self, request: pb.DeleteTargetRequest, context: _Context
    ) -> pb.DeleteTargetResponse:
        """Forget a target and its key (administrators only)."""
        await self._registry.delete_target(request.target_id, _actor(current_caller(), context))
        return pb.DeleteTargetResponse()
