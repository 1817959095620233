"""Trust on first use, by fingerprint: learn the service's CA from its TLS chain.

`mrzap-agent register --ca-fingerprint SHA256` connects once without verification, and accepts
the chain only if one of its certificates is a CA whose SHA-256 (of the DER encoding) equals the
fingerprint the administrator copied from the service. That CA is then stored and every later
connection, the registration calls included, verifies the server against it as usual: a
man-in-the-middle who replays the public CA certificate still cannot present a server
certificate it signed.
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mrzap.errors import InvalidArgument, PermissionDenied, Unavailable

__all__ = ["fetch_pinned_ca", "normalise_fingerprint", "split_server"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def normalise_fingerprint(text: str) -> str:
    """Lowercase hex without separators; accepts `sha256:` and `AB:CD:…` forms."""
    value = text.strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    if not _HEX64.match(value):
        raise InvalidArgument("a CA fingerprint is the SHA-256 of the certificate: 64 hex digits")
    return value


def split_server(server: str) -> tuple[str, int]:
    """Host and port of `host:port` or `[v6]:port`."""
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"the server must be HOST:PORT, got {server!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def fetch_pinned_ca(server: str, fingerprint: str, timeout_s: float = 10.0) -> bytes:
    """The PEM of the CA certificate in `server`'s TLS chain whose SHA-256 is `fingerprint`."""
    wanted = normalise_fingerprint(fingerprint)
    host, port = split_server(server)
    for der in _unverified_chain(host, port, timeout_s):
        if hashlib.sha256(der).hexdigest() != wanted:
            continue
        cert = x509.load_der_x509_certificate(der)
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise InvalidArgument(
                "the certificate with that fingerprint is not a CA; pin the CA certificate"
            )
        return cert.public_bytes(serialization.Encoding.PEM)
    raise PermissionDenied(
        f"no certificate presented by {server} has the fingerprint {wanted}: "
        "refusing to trust it (check the fingerprint, or whether someone is in between)"
    )


def _unverified_chain(host: str, port: int, timeout_s: float) -> list[bytes]:
    """The DER certificates the server sends, without verifying anything."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the fingerprint check below is the verification
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return _chain_der(tls)
    except (OSError, ssl.SSLError) as error:
        raise Unavailable(f"cannot reach {host}:{port} over TLS: {error}") from None


def _chain_der(tls: ssl.SSLSocket) -> list[bytes]:
    # Python 3.13 has SSLSocket.get_unverified_chain() (DER bytes); 3.10-3.12 have it on the
    # underlying _ssl object, returning certificate objects.
    public: Any = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return [bytes(der) for der in public()]
    inner: Any = tls._sslobj  # type: ignore[attr-defined]
    return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in inner.get_unverified_chain() or ()]  # type: ignore[attr-defined]
