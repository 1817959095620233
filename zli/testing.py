"""A fake service for testing zli's commands without a server: it records each request and
answers from handlers the test gives, so tests check what a command sends and how it shows the
answer. End-to-end tests use the real service instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc

from bastion.auth.v1 import auth_service_pb2_grpc as auth_grpc
from bastion.policy.v1 import policy_service_pb2 as policy_pb
from bastion.policy.v1 import policy_service_pb2_grpc as policy_grpc
from bastion.registry.v1 import registry_service_pb2_grpc as registry_grpc
from mrzap import errors

from ._client import Client

__all__ = ["FakeClient", "FakePolicies"]

_T = TypeVar("_T")
Handler = Callable[[Any], Any]


class _Methods:
    """Stands in for a stub: each attribute is the name of the method it names."""

    def __getattr__(self, name: str) -> str:
        return name


@dataclasses.dataclass
class FakeClient(Client):
    """Answers calls with `handlers[method name](request)`; records every call in `calls`."""

    handlers: dict[str, Handler] = dataclasses.field(default_factory=dict)
    calls: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    address: str = "mrzap.example.com:8443"
    ca_path: str = ""
    credentials: str = "session"
    """How the client authenticates, for tests that check which kind a command used."""

    channel: grpc.Channel = dataclasses.field(default=cast(grpc.Channel, None))

    @property
    def server(self) -> str:
        """The service address."""
        return self.address

    @property
    def ca_file(self) -> str:
        """The CA file the client trusts."""
        return self.ca_path

    @property
    def auth(self) -> auth_grpc.AuthServiceStub:
        """Method names of AuthService."""
        return cast(auth_grpc.AuthServiceStub, _Methods())

    @property
    def registry(self) -> registry_grpc.RegistryServiceStub:
        """Method names of RegistryService."""
        return cast(registry_grpc.RegistryServiceStub, _Methods())

    @property
    def policy(self) -> policy_grpc.PolicyServiceStub:
        """Method names of PolicyService."""
        return cast(policy_grpc.PolicyServiceStub, _Methods())

    def call(self, method: Callable[..., _T], request: object) -> _T:
        """The handler's answer; KeyError for a method the test did not expect."""
        name = cast(str, method)
        self.calls.append((name, request))
        return cast(_T, self.handlers[name](request))

    def requests(self, name: str) -> list[Any]:
        """The requests of every call to `name`, in order."""
        return [request for called, request in self.calls if called == name]


_POLICY_METHODS = (
    "ListPolicies",
    "GetPolicy",
    "CreatePolicy",
    "UpdatePolicy",
    "DeletePolicy",
    "CheckPolicy",
)


@dataclasses.dataclass
class FakePolicies:
    """An in-memory PolicyService for zli's policy commands: stores policies by name with
    versions, pages ListPolicies, and refuses what the real service refuses that zli relies on
    (a taken name, a changed kind). `invalid` maps a policy name to the message CheckPolicy
    rejects it with; `test_results` is what CheckPolicy answers for custom Rego.
    """

    invalid: dict[str, str] = dataclasses.field(default_factory=dict)
    test_results: list[policy_pb.RegoTestResult] = dataclasses.field(default_factory=list)
    page_size: int = 2
    """Small, so commands are seen to read every page."""

    versions: dict[str, list[policy_pb.Policy]] = dataclasses.field(default_factory=dict)
    """Every version of every policy, by id (the last is the current one)."""

    deleted: set[str] = dataclasses.field(default_factory=set)

    def install(self, client: FakeClient) -> FakePolicies:
        """Answer `client`'s PolicyService calls; returns self."""
        for name in _POLICY_METHODS:
            client.handlers[name] = getattr(self, name)
        return self

    def current(self) -> list[policy_pb.Policy]:
        """The current version of every policy, by name."""
        found = [v[-1] for pid, v in self.versions.items() if pid not in self.deleted]
        return sorted(found, key=lambda p: p.name)

    def add(self, policy: policy_pb.Policy) -> policy_pb.Policy:
        """Store a new policy as if created; returns it with its id and version."""
        stored = policy_pb.Policy()
        stored.CopyFrom(policy)
        stored.id = f"pol-{len(self.versions) + 1}"
        stored.version = 1
        stored.create_time.FromSeconds(1_900_000_000)
        stored.update_time.FromSeconds(1_900_000_000)
        self.versions[stored.id] = [stored]
        return stored

    def ListPolicies(self, request: policy_pb.ListPoliciesRequest) -> object:
        start = int(request.page_token or 0)
        found = self.current()
        end = start + self.page_size
        return policy_pb.ListPoliciesResponse(
            policies=found[start:end], next_page_token=str(end) if end < len(found) else ""
        )

    def GetPolicy(self, request: policy_pb.GetPolicyRequest) -> object:
        versions = self.versions.get(request.policy_id)
        if not versions or request.policy_id in self.deleted:
            raise errors.NotFound(f"no policy {request.policy_id}")
        if request.version > len(versions):
            raise errors.NotFound(f"policy {request.policy_id} has no version {request.version}")
        wanted = versions[request.version - 1] if request.version else versions[-1]
        return policy_pb.GetPolicyResponse(policy=wanted)

    def CreatePolicy(self, request: policy_pb.CreatePolicyRequest) -> object:
        if any(p.name == request.policy.name for p in self.current()):
            raise errors.AlreadyExists(f"a policy named {request.policy.name!r} exists already")
        return policy_pb.CreatePolicyResponse(policy=self.add(request.policy))

    def UpdatePolicy(self, request: policy_pb.UpdatePolicyRequest) -> object:
        versions = self.versions[request.policy.id]
        if versions[-1].WhichOneof("spec") != request.policy.WhichOneof("spec"):
            raise errors.InvalidArgument("a policy's kind cannot change")
        updated = policy_pb.Policy()
        updated.CopyFrom(request.policy)
        updated.version = len(versions) + 1
        updated.create_time.CopyFrom(versions[0].create_time)
        updated.update_time.FromSeconds(1_900_000_000 + len(versions))
        versions.append(updated)
        return policy_pb.UpdatePolicyResponse(policy=updated)

    def DeletePolicy(self, request: policy_pb.DeletePolicyRequest) -> object:
        self.deleted.add(request.policy_id)
        return policy_pb.DeletePolicyResponse()

    def CheckPolicy(self, request: policy_pb.CheckPolicyRequest) -> object:
        message = self.invalid.get(request.policy.name)
        if message:
            raise errors.InvalidArgument(message)
        is_rego = request.policy.WhichOneof("spec") == "rego"
        return policy_pb.CheckPolicyResponse(test_results=self.test_results if is_rego else [])
