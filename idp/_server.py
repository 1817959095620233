"""The HTTP front of the IdP: stdlib `ThreadingHTTPServer`, routing paths to `OidcProvider`.

Each request is parsed into an `HttpRequest` (query for GET, url-encoded form for POST), handed
to the provider, and its `HttpResponse` written back with headers that keep secrets out of
caches, referrers and frames. Request logs name the method, path and status only: query strings
and bodies (passwords, codes, tokens) are never logged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

from ._config import DevIdpConfig, DevIdpConfigError, is_loopback_host
from ._keys import SigningKeys
from ._oidc import HttpRequest, HttpResponse, OidcProvider

__all__ = ["IdpServer"]

_log = logging.getLogger(__name__)
_MAX_BODY = 64 * 1024
_MAX_FIELDS = 64
_FORM = "application/x-www-form-urlencoded"
_SECURITY_HEADERS = (
    # Token responses, login pages and redirects carrying codes must not be cached anywhere.
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    # The authorize URL carries state and nonce: do not hand it to the client's callback page.
    ("Referrer-Policy", "no-referrer"),
    # No framing of the login form (clickjacking); no scripts at all. No form-action directive:
    # browsers apply it to the redirect that follows the form, which goes to the client.
    ("X-Frame-Options", "DENY"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    ),
)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    provider: OidcProvider


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


_Endpoint = Callable[[OidcProvider, HttpRequest], HttpResponse]
_ROUTES: dict[str, tuple[frozenset[str], _Endpoint]] = {
    "/.well-known/openid-configuration": (frozenset({"GET"}), lambda p, _: p.discovery()),
    "/jwks": (frozenset({"GET"}), lambda p, _: p.jwks()),
    "/authorize": (frozenset({"GET", "POST"}), OidcProvider.authorize),
    "/token": (frozenset({"POST"}), OidcProvider.token),
    "/userinfo": (frozenset({"GET", "POST"}), OidcProvider.userinfo),
}


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    server_version = "mrzap-idp"
    sys_version = ""
    # A client that stops sending mid-request must not hold a thread forever.
    timeout = 30

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        route = _ROUTES.get(path)
        if route is None:
            self._send(HttpResponse.json(404, {"error": "not_found"}))
            return
        methods, endpoint = route
        if self.command not in methods:
            response = HttpResponse.json(405, {"error": "method_not_allowed"})
            allow = ", ".join(sorted(methods))
            self._send(HttpResponse(405, response.body, (*response.headers, ("Allow", allow))))
            return
        try:
            request = self._parse()
            response = endpoint(self.server.provider, request)
        except _BadRequest as exc:
            response = HttpResponse.json(
                exc.status, {"error": "invalid_request", "error_description": str(exc)}
            )
        except Exception:
            # The traceback helps; the exception text never carries request parameters here.
            _log.exception("internal error on %s %s", self.command, path)
            response = HttpResponse.json(500, {"error": "server_error"})
        self._send(response)

    def _parse(self) -> HttpRequest:
        split = urlsplit(self.path)
        form: list[tuple[str, str]] = []
        try:
            query = parse_qsl(split.query, keep_blank_values=True, max_num_fields=_MAX_FIELDS)
            if self.command == "POST":
                form = self._read_form()
        except ValueError as exc:  # also UnicodeDecodeError
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "Malformed parameters.") from exc
        uri = f"{self.server.provider.issuer}{split.path}"
        if split.query:
            uri = f"{uri}?{split.query}"
        return HttpRequest(self.command, uri, self.headers, query, form)

    def _read_form(self) -> list[tuple[str, str]]:
        if self.headers.get("Transfer-Encoding"):
            raise _BadRequest(HTTPStatus.LENGTH_REQUIRED, "Send a Content-Length.")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "Bad Content-Length.") from exc
        if not 0 <= length <= _MAX_BODY:
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "The body is too large.")
        body = self.rfile.read(length)
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not body:
            return []
        if content_type != _FORM:
            raise _BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"The body must be {_FORM}.")
        return parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )

    def _send(self, response: HttpResponse) -> None:
        self.send_response(response.status)
        present = {name.lower() for name, _ in response.headers}
        for name, value in response.headers:
            self.send_header(name, value)
        for name, value in _SECURITY_HEADERS:
            if name.lower() not in present:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Not the request line: its query string may carry parameters we do not want in logs.
        status = code.value if isinstance(code, HTTPStatus) else code
        _log.info("%s %s %s", self.command, urlsplit(self.path).path, status)

    def log_message(self, format: str, *args: object) -> None:
        _log.warning("%s: %s", self.address_string(), format % args)


def _allow_plain_http_on_loopback(host: str) -> None:
    # authlib refuses OAuth requests over plain http unless AUTHLIB_INSECURE_TRANSPORT is set
    # (older releases even on loopback). This IdP serves http and binds loopback addresses only,
    # where the traffic never leaves the machine, so the check is lifted for this process and
    # only after the host was checked to be loopback. It is set in this process's environment:
    # never exported to a shell, and not inherited by anything this IdP could start. A caller
    # that embeds the IdP in its own process shares that setting, as it shares the loopback.
    if not is_loopback_host(host):
        raise DevIdpConfigError(
            f"host {host!r}: the development IdP serves plain http and only listens on loopback"
        )
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"


class IdpServer:
    """The IdP bound to a loopback address; `serve_forever`, or `start`/`stop` in a thread.

    The issuer is `http://HOST:PORT` with the port actually bound (useful with port 0).
    """

    def __init__(
        self,
        config: DevIdpConfig,
        keys: SigningKeys,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        host = config.host if host is None else host
        port = config.port if port is None else port
        _allow_plain_http_on_loopback(host)
        # authlib logs issued tokens (and token requests) at DEBUG: keep that out of any log.
        logging.getLogger("authlib").setLevel(logging.INFO)
        bare = host.strip("[]")
        server_class = _HttpServer6 if ":" in bare else _HttpServer
        self._httpd = server_class((bare, port), _Handler)
        bound_port = self._httpd.server_address[1]
        url_host = f"[{bare}]" if ":" in bare else bare
        self.issuer = f"http://{url_host}:{bound_port}"
        """The issuer URL, also the base of every endpoint."""
        self.provider = OidcProvider(config, keys, self.issuer)
        """The OIDC provider behind the HTTP server."""
        self._httpd.provider = self.provider
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serve until `shutdown` is called (from another thread or a signal handler's thread)."""
        self._httpd.serve_forever(poll_interval=0.1)

    def shutdown(self) -> None:
        """Stop `serve_forever`; blocks until it has returned, so never call it on its thread."""
        self._httpd.shutdown()

    def close(self) -> None:
        """Release the listening socket."""
        self._httpd.server_close()

    def start(self) -> None:
        """Serve on a background thread (for embedding, e.g. in-process test clusters)."""
        self._thread = threading.Thread(target=self.serve_forever, name="mrzap-idp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread started by `start` and release the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.close()

    def __enter__(self) -> IdpServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
