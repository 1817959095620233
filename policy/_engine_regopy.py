"""The embedded engine: rego-cpp through regopy, in the service process (the default).

Measured with bench/policy.py (1,000 policies over 10,000 targets, regopy 1.5): a decision costs
about 0.5-0.9 ms, so decisions run inline on the event loop (a hop to a thread would add a tenth
of that, and one interpreter serves one evaluation at a time anyway, since it holds its input
between calls); explanations, about 10 ms, run in a worker thread on an interpreter of their own.
Loading compiles in a worker thread too. The input is built through the library's C functions
(half the cost of `regopy.Input`), with every string escaped (see `_c_string`).

rego-cpp differs from OPA in ways the shipped module avoids (see the comment at its top); it also
accepts some modules OPA rejects (unsafe variables, v0 syntax), and aborts the whole process on some
modules it cannot compile. So untrusted Rego is first compiled, evaluated and tested in a child
process (policy/_engine_regopy_sandbox.py): checking a custom module, and before a bundle with a
custom module this process has not compiled yet is loaded.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import regopy
from regopy import rego_shared

from mrzap.errors import InvalidArgument, Unavailable

from ._compile import DECISION_QUERY, Bundle, checking_bundle
from ._engine import rego_test_names
from ._model import RegoTestResult

__all__ = ["RegopyEngine"]

_ERROR = re.compile(
    r"\(error \d+:(?P<file>[^|]*)\|(?P<offset>\d+)\|\d+\s+\(errormsg \d+:(?P<msg>[^)]*)\)"
)


class _Prepared:
    """One interpreter with a bundle compiled for the decision query."""

    def __init__(self, bundle: Bundle) -> None:
        self.interpreter = regopy.Interpreter()
        for name, source in bundle.modules.items():
            try:
                self.interpreter.add_module(name, source)
            except regopy.RegoError as error:
                raise InvalidArgument(_message(str(error), bundle.modules)) from None
        self.interpreter.add_data(bundle.data)
        self.plan = self.interpreter.build(f"x := {DECISION_QUERY}")
        if not self.plan.ok():
            raise InvalidArgument("the embedded engine could not compile the policies")

    def evaluate(self, document: Mapping[str, Any]) -> Any:  # noqa: ANN401 - a JSON value
        _set_input(self.interpreter, document)
        try:
            output = self.interpreter.query_bundle(self.plan)
        except Exception as error:  # regopy raises RegoError, or ValueError on an error text
            raise Unavailable(f"the embedded engine failed: {error}") from None
        if not output.ok():
            raise Unavailable(f"the embedded engine failed: {_first_line(str(output))}")
        if not output.results or "x" not in output.results[0].bindings:
            raise Unavailable("the embedded engine found the decision undefined")
        return output.results[0].bindings["x"]


class RegopyEngine:
    """rego-cpp, embedded."""

    name = "embedded"

    def __init__(self) -> None:
        self._decide: _Prepared | None = None
        self._explain: _Prepared | None = None
        # Explanations share one interpreter across worker threads; the lock keeps them apart.
        self._explain_lock = threading.Lock()
        self._proven: set[str] = set()

    async def load(self, bundle: Bundle) -> None:
        """Compile `bundle` in a worker thread, then swap it in.

        Custom modules this process has not compiled before are compiled in a child process
        first, so a module that crashes rego-cpp is refused instead of taking the service down.
        """
        unproven = {
            source for name, source in bundle.modules.items() if name.startswith("custom_")
        } - self._proven
        if unproven:
            await _in_child(bundle, [])
            self._proven |= unproven
        decide, explain = await asyncio.to_thread(lambda: (_Prepared(bundle), _Prepared(bundle)))
        self._decide, self._explain = decide, explain

    async def evaluate(self, document: Mapping[str, Any]) -> Any:  # noqa: ANN401 - a JSON value
        """Evaluate inline (a decision), or in a worker thread (an explanation)."""
        decide, explain = self._decide, self._explain
        if decide is None or explain is None:
            raise Unavailable("the embedded engine has no policies loaded")
        if not document.get("context", {}).get("explain"):
            return decide.evaluate(document)

        def explain_locked() -> Any:  # noqa: ANN401 - a JSON value
            with self._explain_lock:
                return explain.evaluate(document)

        return await asyncio.to_thread(explain_locked)

    async def check_module(self, module: str, package: str) -> None:
        """Compile the module with the shipped ones, and evaluate its package, in a child."""
        (evaluated,) = await _in_child(checking_bundle(module, package), [f"x := data.{package}"])
        if not evaluated["ok"]:
            raise InvalidArgument(f"the module does not evaluate: {_first_line(evaluated['text'])}")

    async def run_tests(self, module: str, package: str) -> list[RegoTestResult]:
        """Evaluate each `test_` rule with no input, as `opa test` does, in a child."""
        names = rego_test_names(module)
        answers = await _in_child(
            checking_bundle(module, package), [f"x := data.{package}.{name}" for name in names]
        )
        results = []
        for name, answer in zip(names, answers, strict=True):
            if not answer["ok"]:
                results.append(RegoTestResult(name, False, _first_line(answer["text"])))
            elif _binding(answer["text"]) is True:
                results.append(RegoTestResult(name, True))
            else:
                results.append(RegoTestResult(name, False, "the rule is false or undefined"))
        return results

    async def close(self) -> None:
        """Drop the interpreters."""
        self._decide = self._explain = None


_SANDBOX = Path(__file__).with_name("_engine_regopy_sandbox.py")

# Inputs of the usual shapes, evaluated in the child before a bundle is loaded here.
_PROBES: list[dict[str, Any]] = [
    {
        "principal": {
            "user_id": "u",
            "subject": {"iss": "i", "sub": "s", "email": "probe@example.com"},
            "groups": ["probe"],
            "admin": False,
            "api_key_id": "",
        },
        "target_access": {
            "target_id": "t",
            "environment_id": "e",
            "verb": "VERB_SHELL",
            "target_user": "root",
            "kube_groups": ["g"],
        },
        "context": {"now": 0, "explain": True, "mfa_verified": False, "who": "w", "what": "x"},
        "scope": {"policies": {}},
    },
    {
        "principal": {"user_id": "", "groups": [], "admin": True, "api_key_id": "mzk_probe"},
        "api_call": {"method": "/probe.v1.Probe/Probe", "access": "admin"},
        "context": {"now": 0, "explain": False, "mfa_verified": False, "who": "w"},
        "scope": {},
    },
]

#: How long a child may take to compile a bundle and run a module's tests.
CHILD_TIMEOUT_S = 30.0


async def _in_child(bundle: Bundle, queries: list[str]) -> list[dict[str, Any]]:
    """Compile `bundle` and run `queries` in a child process; the answers to the queries.

    InvalidArgument with the engine's message if a module does not compile, or if the child
    crashes or overruns: either way the module is not safe to load into the service.
    """
    job = {
        "modules": dict(bundle.modules),
        "data": dict(bundle.data),
        "plan": f"x := {DECISION_QUERY}",
        "probes": _PROBES,
        "queries": queries,
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(_SANDBOX),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            child.communicate(json.dumps(job).encode()), CHILD_TIMEOUT_S
        )
    except TimeoutError:
        child.kill()
        await child.wait()
        raise InvalidArgument(
            f"the embedded engine took longer than {CHILD_TIMEOUT_S:.0f} s to compile the policies"
        ) from None
    try:
        answer = json.loads(out)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        code = child.returncode or 0
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        detail = _last_line(err.decode(errors="replace"))
        raise InvalidArgument(
            f"the embedded engine (rego-cpp) crashed on this Rego ({how}"
            + (f": {detail}" if detail else "")
            + "); rewrite the rule or test it trips on, or run the service with "
            "--policy-engine opa"
        )
    if "module_error" in answer:
        raise InvalidArgument(_message(str(answer["module_error"]), bundle.modules))
    if not answer.get("plan_ok"):
        raise InvalidArgument("the embedded engine could not compile the policies")
    return list(answer["queries"])


def _binding(text: str) -> Any:  # noqa: ANN401 - a JSON value
    try:
        document = json.loads(text)
    except ValueError:
        return None
    results = document if isinstance(document, list) else [document]
    if results and isinstance(results[0], dict):
        return results[0].get("bindings", {}).get("x")
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _message(error: str, modules: Mapping[str, str]) -> str:
    """The engine's errors as `file:line:column: message` lines."""
    found = []
    for match in _ERROR.finditer(error):
        file, offset = match.group("file"), int(match.group("offset"))
        source = modules.get(file, "")
        line = source.count("\n", 0, offset) + 1
        column = offset - (source.rfind("\n", 0, offset) + 1) + 1
        found.append(f"{_public_name(file)}:{line}:{column}: {match.group('msg')}")
    return "; ".join(dict.fromkeys(found)) or _first_line(error)


def _public_name(file: str) -> str:
    # Custom modules are loaded as custom_<id>.rego or custom_check.rego; users know them as
    # "the module".
    return "module" if file.startswith("custom_") else file


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:3])[:500] or "no message"


# Building the input straight through the library's C functions takes half the time of
# regopy.Input, which goes through a Python wrapper per value; it is the larger part of a
# decision's cost. It is also where strings are escaped (see `_c_string`), so there is no
# fallback to regopy.Input, which does not escape them.
_lib = rego_shared.rego


def _set_input(interpreter: regopy.Interpreter, document: Mapping[str, Any]) -> None:
    handle = _lib.regoNewInput()
    try:
        failed = _build(handle, document)
        if failed or _lib.regoSetInput(interpreter._impl, handle):
            raise Unavailable("the embedded engine refused the input")
    finally:
        _lib.regoFreeInput(handle)


def _c_string(value: str) -> bytes:
    # rego-cpp keeps strings in their JSON-escaped form (as it parses them from data and
    # modules) and writes them out unchanged: a raw quote, backslash or control character from
    # the input would come out unescaped, break the result's JSON, or worse, let a request
    # inject keys into the decision. Escaped the same way, input compares equal to data and
    # literals and comes back out as valid JSON. It also keeps a NUL from cutting a C string.
    return json.dumps(value, ensure_ascii=False)[1:-1].encode()


def _build(handle: int, value: Any) -> int:  # noqa: ANN401 - a JSON value
    """Push `value` onto the input under construction; non-zero if a call failed."""
    add_string: Callable[[int, bytes], int] = _lib.regoInputString
    if value is True or value is False:
        return int(_lib.regoInputBoolean(handle, value))
    if isinstance(value, str):
        return int(add_string(handle, _c_string(value)))
    if isinstance(value, int):
        return int(_lib.regoInputInt(handle, value))
    if isinstance(value, float):
        return int(_lib.regoInputFloat(handle, value))
    if value is None:
        return int(_lib.regoInputNull(handle))
    failed = 0
    if isinstance(value, Mapping):
        for key, item in value.items():
            failed |= add_string(handle, _c_string(str(key)))
            failed |= _build(handle, item)
            failed |= _lib.regoInputObjectItem(handle)
        return failed | int(_lib.regoInputObject(handle, len(value)))
    if isinstance(value, list | tuple):
        for item in value:
            failed |= _build(handle, item)
        return failed | int(_lib.regoInputArray(handle, len(value)))
    raise TypeError(f"cannot pass {type(value).__name__} to the policy engine")
