"""The child process that compiles untrusted Rego for the embedded engine.

rego-cpp (regopy 1.5) aborts the whole process on some modules it cannot compile (a C++ exception
nobody catches, e.g. "shape `rego-localref` has no field `rego-refhead`" for `with input as
{...}` in a rule), so the service never compiles a custom module in its own process before this
child has compiled it once: `RegopyEngine` runs this file as a script (it imports only regopy and
the standard library, so it starts fast), and a child that dies makes the module invalid.

Protocol: one JSON job on stdin, `{"modules": {name: source}, "data": {...}, "plan": query,
"probes": [input, ...], "queries": [query, ...]}`, where the plan is evaluated once per probe
input; one JSON answer on the original stdout: `{"module_error": text}` if a module does not
parse, else `{"plan_ok": bool, "queries": [{"ok": bool, "text": output}]}`. rego-cpp prints its
own diagnostics to stdout, so stdout is moved to stderr first.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _run(job: dict[str, Any]) -> dict[str, Any]:
    import regopy

    interpreter = regopy.Interpreter()
    try:
        for name, source in job["modules"].items():
            interpreter.add_module(name, source)
    except regopy.RegoError as error:
        return {"module_error": str(error)}
    interpreter.add_data(job["data"])
    plan = interpreter.build(job["plan"])
    for probe in job.get("probes", []):
        # Evaluations of typical inputs, so a module that crashes at run time fails here.
        interpreter.set_input(probe)
        interpreter.query_bundle(plan)
    interpreter.set_input({})
    answers = []
    for query in job["queries"]:
        try:
            output = interpreter.query(query)
            answers.append({"ok": bool(output.ok()), "text": str(output)})
        except Exception as error:  # regopy raises ValueError when the output is not JSON
            answers.append({"ok": False, "text": str(error)})
    return {"plan_ok": bool(plan.ok()), "queries": answers}


def main() -> None:
    """Read one job, run it, write the answer to the original stdout."""
    result_fd = os.dup(1)
    os.dup2(2, 1)
    answer = _run(json.loads(sys.stdin.read()))
    with os.fdopen(result_fd, "w") as out:
        json.dump(answer, out)


if __name__ == "__main__":
    main()
