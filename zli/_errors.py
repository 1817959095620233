"""How zli ends on an error: one clear line on stderr and an exit code a script can test."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from mrzap import errors

__all__ = ["EXIT_CODES", "EXIT_DENIED", "EXIT_TESTS_FAILED", "clear_errors"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Exit codes by error class; anything else exits 1 (and usage errors 2, as click does).
EXIT_CODES: dict[type[errors.MrzapError], int] = {
    errors.Unauthenticated: 3,
    errors.PermissionDenied: 4,
    errors.NotFound: 5,
    errors.Unavailable: 6,
    errors.ResourceExhausted: 7,
    errors.InvalidArgument: 8,
    errors.FailedPrecondition: 9,
    errors.AlreadyExists: 10,
    errors.Aborted: 13,
}

#: `zli policy explain`: the request would be denied (the command itself worked).
EXIT_DENIED = 11
#: `zli policy test`: the module is valid but at least one of its `test_` rules failed.
EXIT_TESTS_FAILED = 12


def clear_errors(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """Print a MrzapError as one clear line and exit with its code, instead of a traceback."""

    @functools.wraps(command)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(*args, **kwargs)
        except errors.MrzapError as error:
            click.echo(f"zli: {error.message}", err=True)
            code = next((c for cls, c in EXIT_CODES.items() if isinstance(error, cls)), 1)
            sys.exit(code)

    return run
