"""Pinning the service's CA by fingerprint, against a real TLS server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent._pinning import fetch_pinned_ca, normalise_fingerprint
from broker.testing import MemoryDirectory
from mrzap.errors import InvalidArgument, PermissionDenied, Unavailable
from mrzap.tls import ca_fingerprint

from ..broker.conftest import MemoryBroker, start_broker


@pytest_asyncio.fixture
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MemoryBroker]:
    running = await start_broker(tmp_path_factory.mktemp("tls"), MemoryDirectory())
    yield running
    await running.server.stop(0)


def der_sha256(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.mark.asyncio
async def test_matching_fingerprint_yields_the_ca(server: MemoryBroker) -> None:
    ca_pem = server.tls.ca_cert.read_bytes()
    fingerprint = ca_fingerprint(ca_pem)
    pinned = await _fetch(server, fingerprint)
    assert der_sha256(pinned) == fingerprint
    spelled = "SHA256:" + ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    assert der_sha256(await _fetch(server, spelled)) == fingerprint


@pytest.mark.asyncio
async def test_other_fingerprint_is_refused(server: MemoryBroker) -> None:
    with pytest.raises(PermissionDenied, match="refusing to trust it"):
        await _fetch(server, "ab" * 32)


@pytest.mark.asyncio
async def test_server_certificate_fingerprint_is_not_a_ca(server: MemoryBroker) -> None:
    leaf = der_sha256(server.tls.server_cert.read_bytes())
    with pytest.raises(InvalidArgument, match="not a CA"):
        await _fetch(server, leaf)


def test_fingerprint_format_is_checked() -> None:
    with pytest.raises(InvalidArgument, match="64 hex digits"):
        normalise_fingerprint("abc")


def test_unreachable_server_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        fetch_pinned_ca("127.0.0.1:1", "ab" * 32, timeout_s=2.0)


async def _fetch(server: MemoryBroker, fingerprint: str) -> bytes:
    # The fetch blocks; the server runs on this test's event loop, so fetch from a thread.
    return await asyncio.to_thread(fetch_pinned_ca, f"127.0.0.1:{server.port}", fingerprint)
