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
from bastion.registry.v1 import registry_service_pb2_grpc as registry_grpc

from ._client import Client

__all__ = ["FakeClient"]

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

    def call(self, method: Callable[..., _T], request: object) -> _T:
        """The handler's answer; KeyError for a method the test did not expect."""
        name = cast(str, method)
        self.calls.append((name, request))
        return cast(_T, self.handlers[name](request))

    def requests(self, name: str) -> list[Any]:
        """The requests of every call to `name`, in order."""
        return [request for called, request in self.calls if called == name]
