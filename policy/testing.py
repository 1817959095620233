"""Test helpers for the policy role: a minimal OPA REST server, and an engine that is down.

`OpaTestServer` is a TEST FIXTURE, not an OPA server: no OPA server binary can be installed on
the machines this project is built on, so it serves the few endpoints of OPA's REST API that
opa-python-client uses (health, policy upload, list and delete, data upload, and document
queries) on loopback, and answers them with OPA's real Go engine (opa-golib-python-bindings), so
`OpaServerEngine` is tested against OPA's own semantics and error format over real HTTP.
Every change recompiles all modules on a fresh engine; a module that does not compile is refused
with OPA's error body and the previous state kept, as OPA does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from mrzap.errors import Unavailable

from ._compile import Bundle
from ._model import Policy, RegoTestResult

__all__ = ["DownEngine", "OpaTestServer", "StaticPolicies"]

_OPA_ERROR = re.compile(r"(?P<file>[^\s:]+):(?P<row>\d+): (?P<code>rego_\w+): (?P<message>.*)")


class OpaTestServer:
    """A loopback HTTP server speaking enough of OPA's REST API, backed by the real engine."""

    def __init__(self) -> None:
        self._policies: dict[str, str] = {}
        self._data: dict[str, Any] = {}
        self._engine: Any = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.queries = 0
        """How many decision queries the server answered (tests check the engine was asked)."""

    @property
    def spec(self) -> str:
        """The `--policy-engine` value that names this server."""
        return f"opa+http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/policies/", self._list_policies)
        app.router.add_get("/v1/policies", self._list_policies)
        app.router.add_put("/v1/policies/{id:.+}", self._put_policy)
        app.router.add_delete("/v1/policies/{id:.+}", self._delete_policy)
        app.router.add_put("/v1/data/{path:.*}", self._put_data)
        app.router.add_post("/v1/data/{path:.*}", self._query)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening (an outage, as the engine sees it)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def _compile(self, policies: Mapping[str, str], data: Mapping[str, Any]) -> Any:  # noqa: ANN401
        from opa_bindings import engine as opa

        engine = opa.OpaEngine()
        try:
            for policy_id, source in policies.items():
                engine.add_policy(policy_id, source)
            engine.add_data(dict(data))
            # OPA compiles lazily; a query makes it compile every module now.
            engine.eval_query("x := 1")
        except opa.OpaError:
            engine.close()
            raise
        return engine

    def _swap(self, policies: dict[str, str], data: dict[str, Any]) -> web.Response | None:
        from opa_bindings import engine as opa

        try:
            engine = self._compile(policies, data)
        except opa.OpaError as error:
            return _opa_error(error.message)
        if self._engine is not None:
            self._engine.close()
        self._engine, self._policies, self._data = engine, policies, data
        return None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({})

    async def _list_policies(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"result": [{"id": policy_id, "raw": raw} for policy_id, raw in self._policies.items()]}
        )

    async def _put_policy(self, request: web.Request) -> web.Response:
        policies = dict(self._policies)
        policies[request.match_info["id"]] = await request.text()
        return self._swap(policies, self._data) or web.json_response({})

    async def _delete_policy(self, request: web.Request) -> web.Response:
        policy_id = request.match_info["id"]
        if policy_id not in self._policies:
            return web.json_response(
                {"code": "resource_not_found", "message": f"storage_not_found_error: {policy_id}"},
                status=404,
            )
        policies = {k: v for k, v in self._policies.items() if k != policy_id}
        return self._swap(policies, self._data) or web.json_response({})

    async def _put_data(self, request: web.Request) -> web.Response:
        path = [part for part in request.match_info["path"].split("/") if part]
        value = await request.json()
        data = json.loads(json.dumps(self._data))
        if not path:
            data = value
        else:
            node = data
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        return self._swap(self._policies, data) or web.Response(status=204)

    async def _query(self, request: web.Request) -> web.Response:
        from opa_bindings import engine as opa

        body = await request.json()
        path = ".".join(part for part in request.match_info["path"].split("/") if part)
        if self._engine is None:
            self._swap(self._policies, self._data)
        self.queries += 1
        try:
            value = self._engine.eval_document(path, body.get("input"))
        except opa.OpaUndefinedError:
            return web.json_response({})
        except opa.OpaError as error:
            return web.json_response(
                {"code": "internal_error", "message": error.message}, status=500
            )
        return web.json_response({"result": value})


def _opa_error(message: str) -> web.Response:
    """OPA's answer to a module that does not compile (400, with one entry per error)."""
    errors = [
        {
            "code": match.group("code"),
            "message": match.group("message").strip(),
            "location": {"file": match.group("file"), "row": int(match.group("row")), "col": 1},
        }
        for match in _OPA_ERROR.finditer(message)
    ] or [{"code": "rego_compile_error", "message": message, "location": {}}]
    return web.json_response(
        {
            "code": "invalid_parameter",
            "message": "error(s) occurred while compiling module(s)",
            "errors": errors,
        },
        status=400,
    )


class StaticPolicies:
    """A fixed set of policies for a decider, without a database (a `PolicySource`)."""

    def __init__(self, policies: list[Policy]) -> None:
        self.policies = policies
        self.changes = 0
        """Bump it (or use `replace`) to make deciders reload, as a store change would."""

    def replace(self, policies: list[Policy]) -> None:
        """Swap the policies and count a change."""
        self.policies = policies
        self.changes += 1

    async def revision(self) -> int:
        """The change counter."""
        return self.changes

    async def all_current(self) -> list[Policy]:
        """The policies."""
        return list(self.policies)


class DownEngine:
    """An engine that is unreachable: every call fails as an outage would."""

    name = "down"

    async def load(self, bundle: Bundle) -> None:
        """Fail."""
        raise Unavailable("connection refused")

    async def evaluate(self, document: Mapping[str, Any]) -> Any:  # noqa: ANN401 - a JSON value
        """Fail."""
        raise Unavailable("connection refused")

    async def check_module(self, module: str, package: str) -> None:
        """Fail."""
        raise Unavailable("connection refused")

    async def run_tests(self, module: str, package: str) -> list[RegoTestResult]:
        """Fail."""
        raise Unavailable("connection refused")

    async def close(self) -> None:
        """Nothing to release."""
