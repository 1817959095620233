"""Child processes that announce readiness on a line of standard output.

`mrzapd up` runs the development IdP (and later the local agent) this way, and the end-to-end
tests start every real process with it: start, wait for the ready line, stop with SIGTERM and
then SIGKILL if it does not go.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import DeadlineExceeded, Unavailable

__all__ = ["ChildProcess"]


class ChildProcess:
    """A started child whose output is collected in the background."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bool = False,
    ) -> None:
        self.argv = list(argv)
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(  # noqa: S603 - argv is built by the caller, no shell
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            text=True,
            bufsize=1,
            # Its own session: a Ctrl-C in the terminal reaches only the parent, which stops us.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        """Everything the child printed so far."""
        with self._changed:
            return "".join(self._lines)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout_s: float = 20.0) -> re.Match[str]:
        """The first output line matching `pattern`; fails if the child exits or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self._lines)
                if self.process.poll() is not None and not self._reader.is_alive():
                    raise Unavailable(
                        f"{self.argv[0]} exited with {self.process.returncode} before "
                        f"printing {pattern!r}:\n{self.output[-2000:]}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(
                        f"{self.argv[0]} did not print {pattern!r} within {timeout_s} s:\n"
                        f"{self.output[-2000:]}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def write(self, text: str) -> None:
        """Send text to the child's standard input."""
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def wait(self, timeout_s: float = 20.0) -> int:
        """The exit code, once the child has exited (its pipes are closed then)."""
        code = self.process.wait(timeout_s)
        self._reader.join(timeout_s)
        self._close_pipes()
        return code

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the child's process group, then SIGKILL it if it has not gone in time."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout_s)
        self._reader.join(timeout_s)
        self._close_pipes()
        return self.process.returncode

    def _close_pipes(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # a child that is gone may leave a broken pipe
                    stream.close()
