"""Test helpers for the development IdP: run it as a real process, and act as the browser.

`IdpProcess` starts `python -m idp` on a free loopback port and waits for its ready line;
`http_request` is a tiny urllib client that does not follow redirects (a test wants to see
them); `submit_login_form` does what a user's browser does on the login page.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from http.client import HTTPMessage
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import urlencode, urljoin

__all__ = ["HttpReply", "IdpProcess", "http_request", "submit_login_form"]

_READY_PREFIX = "mrzap-idp listening on "
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class HttpReply:
    """Status, headers and body of one HTTP exchange."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def http_request(
    url: str,
    *,
    form: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> HttpReply:
    """GET `url`, or POST `form` url-encoded to it; redirects are returned, not followed."""
    data = None if form is None else urlencode(form).encode("ascii")
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return HttpReply(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return HttpReply(error.code, dict(error.headers.items()), error.read())


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden" and "name" in values:
            self.fields.append((values["name"], values.get("value", "")))


def submit_login_form(authorize_url: str, username: str, password: str) -> HttpReply:
    """Open the authorization URL and submit its login form as a browser would; return the
    IdP's answer (a redirect to the client on success, the form again on a wrong password)."""
    page = http_request(authorize_url)
    if page.status != 200:
        return page
    parser = _FormParser()
    parser.feed(page.text)
    if parser.action is None:
        raise AssertionError("the authorization page has no login form")
    fields = [*parser.fields, ("username", username), ("password", password)]
    return http_request(urljoin(authorize_url, parser.action), form=fields)


class IdpProcess:
    """`python -m idp` in its own process, on a free loopback port; stop it with `stop()`.

    Its stderr (logs) goes to `log_path`, so a chatty IdP can never block on a full pipe.
    """

    def __init__(
        self,
        config: Path,
        data_dir: Path,
        log_path: Path,
        *extra_args: str,
        startup_timeout: float = 20.0,
    ) -> None:
        self.log_path = log_path
        args = [sys.executable, "-W", "error", "-m", "idp", "--config", str(config)]
        args += ["--data-dir", str(data_dir), "--port", "0", *extra_args]
        env = dict(os.environ)
        env.pop("AUTHLIB_INSECURE_TRANSPORT", None)  # the IdP must set it itself
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 -- our own interpreter and module
                args, cwd=_REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=log
            )
        self.issuer = self._wait_ready(startup_timeout)
        """The issuer URL printed on the ready line."""

    def _wait_ready(self, timeout: float) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.process.stdout], [], [], left)
            if not readable:
                break
            line = self.process.stdout.readline().decode("utf-8")
            if not line:  # the process exited before it was ready
                self.stop()
                raise RuntimeError(f"the IdP exited early:\n{self.log()}")
            if line.startswith(_READY_PREFIX):
                return line.removeprefix(_READY_PREFIX).strip()
        self.stop()
        raise RuntimeError(f"the IdP was not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """What the IdP wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the process, wait for it (SIGKILL after `timeout`), return its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> IdpProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
