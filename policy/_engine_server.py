"""An OPA server as the engine (`--policy-engine opa+http://HOST:PORT`), through opa-python-client.

The service uploads its modules under `/v1/policies/mrzap/…` and its data under
`/v1/data/mrzap_data`, and asks `/v1/data/mrzap/authz/decision` for each decision. OPA has no
transaction across several uploads, so a load uploads custom modules first, then the module that
gathers them, then the shipped module, and removes stale modules last: a decision in between sees
each module either old or new. Custom modules are checked under a throwaway package
(`mrzap.check_<random>`) that is deleted afterwards, so checking never changes live decisions.

Every request has a short timeout and no retries: an outage becomes a denial at once (fail
closed), never a stall.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import aiohttp
from opa_client import AsyncOpaClient
from opa_client.errors import (
    DeletePolicyError,
    PatchDataError,
    PolicyNotFoundError,
    RegoParseError,
)

from mrzap.errors import InvalidArgument, Unavailable

from ._compile import Bundle, glue_module, rename_package
from ._engine import rego_test_names
from ._model import RegoTestResult

__all__ = ["OpaServerEngine"]

_PREFIX = "mrzap/"
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
_SERVER_ERRORS = (DeletePolicyError, PatchDataError, PolicyNotFoundError)


class OpaServerEngine:
    """A remote OPA server."""

    def __init__(self, host: str, port: int, *, tls: bool = False, timeout: float = 2.0) -> None:
        self.name = f"opa+{'https' if tls else 'http'}://{host}:{port}"
        self._client = AsyncOpaClient(host=host, port=port, ssl=tls, timeout=timeout, retries=0)
        self._open = False
        self._uploaded: set[str] = set()

    async def _ensure_open(self) -> AsyncOpaClient:
        if not self._open:
            await self._client.__aenter__()
            self._open = True
        return self._client

    async def load(self, bundle: Bundle) -> None:
        """Upload the modules and the data; remove modules of the previous bundle."""
        client = await self._ensure_open()
        order = sorted(
            bundle.modules,
            key=lambda name: 0 if name.startswith("custom_") else 1 if "customs" in name else 2,
        )
        uploaded = set()
        try:
            for name in order:
                policy_id = _PREFIX + name.removesuffix(".rego")
                await client.update_policy_from_string(
                    bundle.modules[name], policy_id, rego_compat=False
                )
                uploaded.add(policy_id)
            await client.update_or_create_data(dict(bundle.data["mrzap_data"]), "mrzap_data")
            for stale in self._uploaded - uploaded:
                await client.delete_policy(stale)
        except RegoParseError as error:
            raise InvalidArgument(_rego_message(error)) from None
        except (*_TRANSPORT_ERRORS, *_SERVER_ERRORS) as error:
            raise Unavailable(f"the OPA server failed: {_describe(error)}") from None
        self._uploaded = uploaded

    async def evaluate(self, document: Mapping[str, Any]) -> Any:  # noqa: ANN401 - a JSON value
        """Ask the server for the decision."""
        client = await self._ensure_open()
        try:
            body = await client.query_rule(dict(document), "mrzap/authz", "decision")
        except (*_TRANSPORT_ERRORS, ValueError) as error:
            raise Unavailable(f"the OPA server failed: {_describe(error)}") from None
        if not isinstance(body, dict) or "result" not in body:
            raise Unavailable("the OPA server found the decision undefined")
        return body["result"]

    async def check_module(self, module: str, package: str) -> None:
        """Compile the module on the server under a throwaway package."""
        async with _Scratch(await self._ensure_open(), module):
            pass

    async def run_tests(self, module: str, package: str) -> list[RegoTestResult]:
        """Evaluate each `test_` rule on the server under a throwaway package."""
        client = await self._ensure_open()
        results = []
        async with _Scratch(client, module) as scratch:
            for name in rego_test_names(module):
                try:
                    body = await client.query_rule({}, scratch.package.replace(".", "/"), name)
                except aiohttp.ClientResponseError as error:
                    results.append(RegoTestResult(name, False, f"the OPA server said {error}"))
                    continue
                except _TRANSPORT_ERRORS as error:
                    raise Unavailable(f"the OPA server failed: {_describe(error)}") from None
                if isinstance(body, dict) and body.get("result") is True:
                    results.append(RegoTestResult(name, True))
                else:
                    results.append(RegoTestResult(name, False, "the rule is false or undefined"))
        return results

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._open:
            await self._client.close_connection()
            self._open = False


class _Scratch:
    """A custom module uploaded under a throwaway package, with its gathering module."""

    def __init__(self, client: AsyncOpaClient, module: str) -> None:
        self._client = client
        suffix = secrets.token_hex(6)
        self.package = f"mrzap.check_{suffix}"
        self._modules = {
            f"{_PREFIX}check/{suffix}": rename_package(module, self.package),
            f"{_PREFIX}check/{suffix}_glue": glue_module(
                [("", "", self.package)], package=f"mrzap.check_{suffix}_glue"
            ),
        }

    async def __aenter__(self) -> _Scratch:
        try:
            for policy_id, source in self._modules.items():
                await self._client.update_policy_from_string(source, policy_id, rego_compat=False)
        except RegoParseError as error:
            await self._remove()
            raise InvalidArgument(_rego_message(error)) from None
        except (*_TRANSPORT_ERRORS, *_SERVER_ERRORS) as error:
            await self._remove()
            raise Unavailable(f"the OPA server failed: {_describe(error)}") from None
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._remove()

    async def _remove(self) -> None:
        for policy_id in reversed(self._modules):
            try:
                await self._client.delete_policy(policy_id)
            except (*_TRANSPORT_ERRORS, *_SERVER_ERRORS, ValueError):
                continue  # not uploaded, or the server is gone; nothing live refers to it


def _rego_message(error: RegoParseError) -> str:
    """OPA's compile errors as `module:row:col: code: message` lines."""
    details = []
    for item in getattr(error, "errors", None) or []:
        location = item.get("location") or {}
        where = f"module:{location.get('row', '?')}:{location.get('col', '?')}"
        details.append(f"{where}: {item.get('code', '')}: {item.get('message', '')}")
    return "; ".join(details) or str(error.message)


def _describe(error: BaseException) -> str:
    return str(getattr(error, "message", "") or error) or type(error).__name__
