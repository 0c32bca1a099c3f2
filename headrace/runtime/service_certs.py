"""A deployment's own certificate authority and the certificates of its
services, for mutual TLS between them (docs/security.md).

`headrace certs init DIR` writes, into DIR:
    ca.crt, ca.key            the deployment's CA (keep ca.key off service hosts)
    <role>.crt, <role>.key    one per role (router, cache, scheduler, worker,
                              consumer, admin), signed by the CA

A certificate says its role in its common name, and carries the DNS name
`<role>.headrace.internal`, which clients check when they connect to a
server of that role (whatever address they dial). A worker certificate
also lists the hosts its worker may announce to the scheduler, so a stolen
worker credential cannot register a worker somewhere else.

Keys are ECDSA P-256: cheap to make and to handshake with.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class Role(StrEnum):
    """Who a service peer is. See ACCESS in service_identity.py for what each may call."""

    ROUTER = "router"
    CACHE = "cache"
    SCHEDULER = "scheduler"
    WORKER = "worker"
    # The batch consumer beside each worker.
    CONSUMER = "consumer"
    # The operator's tools (`headrace up`/`status`/`health`): status only.
    ADMIN = "admin"


TRUST_DOMAIN: Final = "headrace.internal"
CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
# Hosts a worker certificate made by `certs init` may announce: this machine.
LOCAL_HOSTS: Final = ("127.0.0.1", "::1", "localhost")
CA_VALID_DAYS: Final = 5 * 365
LEAF_VALID_DAYS: Final = 365


def server_name(role: Role) -> str:
    """The DNS name in every certificate of `role`, checked by its clients."""
    return f"{role.value}.{TRUST_DOMAIN}"


def cert_path(certs_dir: Path, role: Role) -> Path:
    return certs_dir / f"{role.value}.crt"


def key_path(certs_dir: Path, role: Role) -> Path:
    return certs_dir / f"{role.value}.key"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    encoding, private_format = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, private_format, serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """Written 0600 from the start (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def create_ca(certs_dir: Path, *, deployment: str = "headrace") -> None:
    """A new CA in certs_dir (ca.crt, ca.key). Refuses to overwrite one."""
    certs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (certs_dir / CA_KEY).exists() or (certs_dir / CA_CERT).exists():
        raise FileExistsError(f"{certs_dir} already holds a CA; issue certificates from it or pick another folder")
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{deployment} internal CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
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
    _write_private(certs_dir / CA_KEY, _key_pem(key))
    (certs_dir / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue(
    ca_dir: Path,
    role: Role,
    *,
    out_dir: Path | None = None,
    hosts: Sequence[str] = (),
    valid_days: int = LEAF_VALID_DAYS,
) -> Path:
    """A certificate and key for `role`, signed by the CA in ca_dir, written
    to out_dir (default: ca_dir) as <role>.crt/.key; out_dir also gets a copy
    of the CA certificate. `hosts`: for a worker, the hosts (IPs or DNS
    names) it may announce as its endpoint. Returns the certificate's path."""
    out = out_dir or ca_dir
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_dir / CA_KEY} is not an EC key made by `headrace certs init`")
    ca_cert_pem = (ca_dir / CA_CERT).read_bytes()
    ca_cert = x509.load_pem_x509_certificates(ca_cert_pem)[0]
    key = _new_key()
    now = _now()
    names: list[x509.GeneralName] = [x509.DNSName(server_name(role))]
    names += [_san_entry(host) for host in dict.fromkeys(hosts)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role.value)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # Every service is both: servers answer, and most also call others.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path(out, role), _key_pem(key))
    path = cert_path(out, role)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if out != ca_dir:
        (out / CA_CERT).write_bytes(ca_cert_pem)
    return path


def init_deployment(certs_dir: Path, *, worker_hosts: Sequence[str] = ()) -> None:
    """A CA and one certificate per role, for a deployment on this machine
    (worker_hosts: more hosts workers may announce, beside this machine)."""
    create_ca(certs_dir)
    for role in Role:
        hosts = [*LOCAL_HOSTS, *worker_hosts] if role is Role.WORKER else []
        issue(certs_dir, role, hosts=hosts)


def deployment_ready(certs_dir: Path) -> bool:
    """Whether certs_dir holds a CA certificate and every role's files."""
    return (certs_dir / CA_CERT).is_file() and all(
        cert_path(certs_dir, role).is_file() and key_path(certs_dir, role).is_file() for role in Role
    )
