"""The policy engine interface, and how `--policy-engine` picks an implementation.

An engine loads a bundle (the shipped, generated and custom Rego modules and the data; see
policy/_compile.py) and evaluates `data.mrzap.authz.decision` for an input. Three implementations:

- `embedded` (default): rego-cpp through regopy, in the service process (policy/_engine_regopy.py);
- `opa`: OPA's own Go engine through opa-golib-python-bindings, in process; the reference that the
  policy tests also run on (policy/_engine_opa.py); installed only with the `dev` extra;
- `opa+http://HOST:PORT`: an OPA server, through opa-python-client (policy/_engine_server.py).

Every failure to evaluate raises `Unavailable` with the engine's message: the decider turns it into
a denial (fail closed). Invalid Rego raises `InvalidArgument` with the engine's message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from mrzap.errors import InvalidArgument

from ._compile import Bundle
from ._model import RegoTestResult

__all__ = ["PolicyEngine", "engine_from_spec", "rego_test_names"]

_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.MULTILINE)


class PolicyEngine(Protocol):
    """A Rego engine holding one bundle at a time."""

    @property
    def name(self) -> str:
        """How `--policy-engine` names this engine (never with credentials)."""
        ...

    async def load(self, bundle: Bundle) -> None:
        """Replace the loaded bundle; evaluations see the old one or the new one, never a mix.

        InvalidArgument (with the engine's message) if the bundle does not compile; the old
        bundle stays loaded then. Unavailable if the engine cannot be reached.
        """
        ...

    async def evaluate(self, document: Mapping[str, Any]) -> Any:  # noqa: ANN401 - a JSON value
        """The value of `data.mrzap.authz.decision` for this input; Unavailable on any failure."""
        ...

    async def check_module(self, module: str, package: str) -> None:
        """Compile a custom module (in `package`) with the shipped ones; InvalidArgument if bad."""
        ...

    async def run_tests(self, module: str, package: str) -> list[RegoTestResult]:
        """Evaluate the module's `test_` rules, in name order."""
        ...

    async def close(self) -> None:
        """Release the engine."""
        ...


def rego_test_names(module: str) -> list[str]:
    """The names of the `test_` rules a module defines, sorted (rule heads start a line)."""
    return sorted(set(_TEST_RULE.findall(module)))


def engine_from_spec(spec: str) -> PolicyEngine:
    """The engine `--policy-engine` names: `embedded`, `opa` or `opa+http://HOST:PORT`."""
    if spec == "embedded":
        from ._engine_regopy import RegopyEngine

        return RegopyEngine()
    if spec == "opa":
        from ._engine_opa import OpaEngine

        return OpaEngine()
    if spec.startswith(("opa+http://", "opa+https://")):
        from ._engine_server import OpaServerEngine

        parts = urlsplit(spec.removeprefix("opa+"))
        if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
            raise InvalidArgument(
                f"--policy-engine {spec!r}: give an OPA server as opa+http://HOST:PORT"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 8181)
        except ValueError:
            raise InvalidArgument(f"--policy-engine {spec!r}: the port is not valid") from None
        return OpaServerEngine(parts.hostname, port, tls=parts.scheme == "https")
    raise InvalidArgument(
        f"unknown policy engine {spec!r}: use embedded, opa, or opa+http://HOST:PORT"
    )
