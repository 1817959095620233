"""TLS material for the service: a private CA and a server certificate, generated on first run.

`mrzapd up` keeps both in its data directory (private keys 0600). Clients trust the CA file, or
pin its SHA-256 fingerprint, so a development install needs no public certificate authority.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .keys import write_secret_file

__all__ = ["TlsFiles", "ca_fingerprint", "ensure_server_tls"]

_CA_LIFETIME = datetime.timedelta(days=3650)
_SERVER_LIFETIME = datetime.timedelta(days=397)


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """Where the TLS material of a data directory lives."""

    directory: Path
    """The folder holding the files."""

    @property
    def ca_cert(self) -> Path:
        """The CA certificate clients trust (public)."""
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA's private key (0600)."""
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The server certificate chain (public)."""
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        """The server's private key (0600)."""
        return self.directory / "server.key"

    def server_chain(self) -> bytes:
        """The PEM chain the server presents: its certificate, then the CA's.

        Sending the CA too lets an agent pin it by fingerprint on first contact
        (`mrzap-agent register --ca-fingerprint`) and verify normally from then on.
        """
        chain = self.server_cert.read_bytes()
        ca = self.ca_cert.read_bytes()
        if ca.strip() in chain:
            return chain
        return chain.rstrip(b"\n") + b"\n" + ca


def ca_fingerprint(ca_pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as lowercase hex."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def ensure_server_tls(directory: Path, hosts: Sequence[str]) -> TlsFiles:
    """Create the CA and a server certificate for `hosts` unless they exist; return the paths.

    An existing server certificate that does not cover every name in `hosts` is re-issued from
    the same CA, so clients that trust the CA keep working.
    """
    files = TlsFiles(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not files.ca_cert.exists():
        _write_ca(files)
    if not files.server_cert.exists() or not _covers(files.server_cert.read_bytes(), hosts):
        _write_server(files, hosts)
    return files


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_ca(files: TlsFiles) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mrzap development CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_secret_file(files.ca_key, _private_pem(key))
    files.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _covers(cert_pem: bytes, hosts: Sequence[str]) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    if cert.not_valid_after_utc < _now() + datetime.timedelta(days=30):
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    present = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    present |= set(san.get_values_for_type(x509.DNSName))
    return set(hosts) <= present


def _write_server(files: TlsFiles, hosts: Sequence[str]) -> None:
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key is not an EC key")
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _SERVER_LIFETIME)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_secret_file(files.server_key, _private_pem(key))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
