"""The reference engine: OPA's own Go engine, in process, through opa-golib-python-bindings.

It gives real OPA semantics without an OPA server, so the policy tests run every case on it as
well as on the embedded engine, and the two must agree. The package is a `dev` extra (its metadata
asks for a newer Python than it needs, so it is installed with `--ignore-requires-python`; see the
Makefile); the service imports it only when `--policy-engine opa` is chosen.

OPA compiles lazily, so loading evaluates the decision once to surface compile errors then.
The Go engine serialises evaluations itself; a decision costs tens of microseconds, so it runs
inline, and explanations and loading run in a worker thread.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

from mrzap.errors import FailedPrecondition, InvalidArgument, Unavailable

from ._compile import Bundle, checking_bundle
from ._engine import rego_test_names
from ._model import RegoTestResult

try:
    import opa_bindings.engine as opa
except ImportError:  # pragma: no cover - depends on the installation
    opa = None

__all__ = ["OpaEngine"]

_DOCUMENT = "mrzap.authz.decision"
_CUSTOM_FILE = re.compile(r"custom_[A-Za-z0-9_-]+\.rego")
_PROBE: dict[str, Any] = {"principal": {}, "context": {"now": 0}, "scope": {}}


def _require() -> Any:  # noqa: ANN401 - the untyped module
    if opa is None:
        raise FailedPrecondition(
            "--policy-engine opa needs opa-golib-python-bindings: "
            "pip install --ignore-requires-python opa-golib-python-bindings==0.4.4"
        )
    return opa


def _prepare(bundle: Bundle) -> Any:  # noqa: ANN401 - opa_bindings.engine.OpaEngine
    module = _require()
    engine = module.OpaEngine()
    try:
        for name, source in bundle.modules.items():
            engine.add_policy(name, source)
        engine.add_data(dict(bundle.data))
        engine.eval_document(_DOCUMENT, _PROBE)
    except module.OpaUndefinedError:
        pass  # compiled; the probe input simply decides nothing
    except module.OpaError as error:
        engine.close()
        raise InvalidArgument(_public(error.message)) from None
    return engine


def _public(message: str) -> str:
    # Custom modules are loaded as custom_<id>.rego or custom_check.rego; users know "the module".
    text = message.replace("bundle activation failed: ", "")
    return _CUSTOM_FILE.sub("module", text)


class OpaEngine:
    """OPA's Go engine, embedded."""

    name = "opa"

    def __init__(self) -> None:
        _require()
        self._engine: Any = None

    async def load(self, bundle: Bundle) -> None:
        """Compile `bundle` in a worker thread, then swap it in."""
        engine = await asyncio.to_thread(_prepare, bundle)
        old, self._engine = self._engine, engine
        if old is not None:
            old.close()

    async def evaluate(self, document: Mapping[str, Any]) -> Any:  # noqa: ANN401 - a JSON value
        """Evaluate inline (a decision), or in a worker thread (an explanation)."""
        engine = self._engine
        if engine is None:
            raise Unavailable("the OPA engine has no policies loaded")
        if document.get("context", {}).get("explain"):
            return await asyncio.to_thread(_evaluate, engine, document)
        return _evaluate(engine, document)

    async def check_module(self, module: str, package: str) -> None:
        """Compile the module with the shipped ones."""
        engine = await asyncio.to_thread(_prepare, checking_bundle(module, package))
        engine.close()

    async def run_tests(self, module: str, package: str) -> list[RegoTestResult]:
        """Evaluate each `test_` rule with no input, as `opa test` does."""
        return await asyncio.to_thread(_run_tests, module, package)

    async def close(self) -> None:
        """Release the Go engine."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()


def _evaluate(engine: Any, document: Mapping[str, Any]) -> Any:  # noqa: ANN401 - JSON
    module = _require()
    try:
        return engine.eval_document(_DOCUMENT, dict(document))
    except module.OpaUndefinedError:
        raise Unavailable("the OPA engine found the decision undefined") from None
    except module.OpaError as error:
        raise Unavailable(f"the OPA engine failed: {error.message}") from None


def _run_tests(module_source: str, package: str) -> list[RegoTestResult]:
    module = _require()
    engine = _prepare(checking_bundle(module_source, package))
    results = []
    try:
        for name in rego_test_names(module_source):
            try:
                rows = engine.eval_query(f"x := data.{package}.{name}")
            except module.OpaError as error:
                results.append(RegoTestResult(name, False, _public(error.message)))
                continue
            if rows and rows[0].get("x") is True:
                results.append(RegoTestResult(name, True))
            else:
                results.append(RegoTestResult(name, False, "the rule is false or undefined"))
    finally:
        engine.close()
    return results
