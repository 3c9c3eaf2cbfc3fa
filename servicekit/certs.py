"""Development certificates: a CA, a server certificate and client certificates.

For local runs, tests and docker compose only: in production, certificates come from the
operator's PKI. Keys are ECDSA P-256 (fast to make, supported by gRPC's TLS); private keys
are written readable by their owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "msmtrec development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    *,
    ca: bool = False,
    hosts: Sequence[str] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_dev_certs(
    out_dir: Path,
    clients: Sequence[str] = (),
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 30,
) -> dict[str, Path]:
    """Write ca.pem/ca.key, server.pem/server.key (SAN ``hosts``) and
    client-<name>.pem/.key for each client. Returns name → path."""
    out_dir = Path(out_dir)
    ca_key = _key()
    ca_cert = _issue("msmtrec dev CA", ca_key, _name("msmtrec dev CA"), ca_key, days, ca=True)
    paths: dict[str, Path] = {}

    def emit(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        paths[f"{stem}.pem"] = out_dir / f"{stem}.pem"
        paths[f"{stem}.key"] = out_dir / f"{stem}.key"
        _write(paths[f"{stem}.pem"], cert.public_bytes(serialization.Encoding.PEM))
        _write(paths[f"{stem}.key"], _pem_key(key), private=True)

    emit("ca", ca_cert, ca_key)
    server_key = _key()
    server_cert = _issue(
        hosts[0] if hosts else "localhost",
        server_key,
        ca_cert.subject,
        ca_key,
        days,
        hosts=hosts,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    emit("server", server_cert, server_key)
    for name in clients:
        key = _key()
        cert = _issue(
            name, key, ca_cert.subject, ca_key, days, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        )
        emit(f"client-{name}", cert, key)
    return paths
