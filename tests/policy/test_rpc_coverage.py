"""Every RPC of the contract is classified for the authorization interceptor, and nothing else is.

The test walks the generated descriptors of every `bastion.*` service, so a method added to a
proto without a classification fails here before it can reach a server (where it would be
refused anyway: the interceptor fails closed for unclassified methods).
"""

from __future__ import annotations

import importlib
import pkgutil

from google.protobuf.descriptor import ServiceDescriptor

import bastion
from mrzapd._access import ACCESS


def _contract_services() -> list[ServiceDescriptor]:
    services = []
    for module_info in pkgutil.walk_packages(bastion.__path__, "bastion."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        services += module.DESCRIPTOR.services_by_name.values()
    return services


def _methods() -> set[str]:
    return {
        f"/{service.full_name}/{method.name}"
        for service in _contract_services()
        for method in service.methods
    }


def test_the_walk_finds_every_service() -> None:
    names = {service.full_name for service in _contract_services()}
    assert names >= {
        "bastion.agent.v1.AgentService",
        "bastion.audit.v1.AuditService",
        "bastion.auth.v1.AuthService",
        "bastion.broker.v1.BrokerService",
        "bastion.policy.v1.PolicyService",
        "bastion.registry.v1.RegistryService",
    }


def test_every_rpc_is_classified() -> None:
    missing = sorted(_methods() - set(ACCESS))
    assert not missing, f"RPCs without an access class: {missing}"


def test_every_classification_names_a_real_rpc() -> None:
    unknown = sorted(set(ACCESS) - _methods())
    assert not unknown, f"classified methods that the contract does not have: {unknown}"
