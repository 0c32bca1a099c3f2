"""Service identity on every internal hop: mutual TLS with the deployment's
CA (service_certs.py), and what each role may call (docs/security.md).

- Servers of cache, scheduler and workers demand a client certificate
  signed by the CA (the TLS handshake fails without one).
- Clients check the server's certificate names the role they meant to reach
  (`<role>.headrace.internal`), whatever address they dialled.
- Per call, the shared interceptor checks the peer's role against ACCESS and
  takes `x-headrace-tenant` only from a role that vouches for tenants
  (the router, which authenticated the API key; the batch consumer, which
  runs rows of jobs the router accepted).

One place for all of it: channels.py and server.py call in here, so every
client (router, consumers, load reports, CLI, bench) and every server gets
it from its wiring, with no per-call code.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from headrace.runtime.config import Settings
from headrace.runtime.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from headrace.runtime.service_certs import CA_CERT, Role, cert_path, key_path, server_name

_ROUTER_SCHEDULER_METHODS: Final = (
    *("Place", "PlaceNowMany", "Release", "ReleaseMany", "RenewLease", "ListWorkers", "GetPoolStatus"),
    *("SubmitBatch", "GetBatch", "CancelBatch", "ListBatches", "StreamBatchResults"),
    *("UploadFile", "GetFile", "GetFileContent", "DeleteFile"),
)
# Who may call what ("/package.Service/Method"; "Service/*" for all of one
# service). Health and reflection are open to every authenticated peer.
ACCESS: Final[Mapping[Role, frozenset[str]]] = {
    # Everything it needs to serve a request, except speaking for a worker.
    Role.ROUTER: frozenset(
        {"/headrace.v1.Cache/*", "/headrace.v1.Worker/*"}
        | {f"/headrace.v1.Scheduler/{method}" for method in _ROUTER_SCHEDULER_METHODS}
    ),
    # A worker reports its load, nothing else: it never reads a job or a lease.
    Role.WORKER: frozenset({"/headrace.v1.Scheduler/ReportLoad"}),
    # The batch consumer runs rows on the worker beside it, each under a
    # lease it asks the scheduler for (docs/scheduler.md, "One owner of capacity").
    Role.CONSUMER: frozenset(
        {f"/headrace.v1.Worker/{method}" for method in ("Generate", "GenerateBatch", "Embed", "GetLoad", "Abort")}
        | {
            f"/headrace.v1.Scheduler/{method}"
            for method in ("Place", "PlaceMany", "Release", "ReleaseMany", "RenewLease")
        }
    ),
    # The operator's tools: status, never a tenant's data.
    Role.ADMIN: frozenset(
        {"/headrace.v1.Scheduler/ListWorkers", "/headrace.v1.Scheduler/GetPoolStatus", "/headrace.v1.Worker/GetLoad"}
    ),
    Role.CACHE: frozenset(),
    Role.SCHEDULER: frozenset(),
}
# Roles whose x-headrace-tenant is believed.
TENANT_VOUCHERS: Final = frozenset({Role.ROUTER, Role.CONSUMER})
_OPEN_TO_PEERS: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class PeerIdentity:
    """The authenticated caller of the current RPC."""

    role: Role
    # Hosts its certificate names (a worker may announce only these).
    hosts: frozenset[str]

    def may_announce(self, endpoint: str) -> bool:
        """Whether a worker with this identity may register `endpoint` (host:port)."""
        host = endpoint.rsplit(":", 1)[0].strip("[]")
        if host in self.hosts or any(_wildcard_matches(name, host) for name in self.hosts):
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(_same_ip(address, name) for name in self.hosts)


def _wildcard_matches(name: str, host: str) -> bool:
    """A `*.domain` name covers exactly one leading label, as in TLS
    (RFC 6125): `*.worker-smollm2` names `worker-smollm2-3.worker-smollm2`
    (a StatefulSet's pods), not `a.b.worker-smollm2` nor the domain itself."""
    if not name.startswith("*."):
        return False
    label, dot, rest = host.partition(".")
    return bool(label) and bool(dot) and rest == name[2:]


def _same_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address, name: str) -> bool:
    try:
        return ipaddress.ip_address(name) == address
    except ValueError:
        return False


# Set by the interceptor on servers with service identity; None elsewhere.
peer_var: ContextVar[PeerIdentity | None] = ContextVar("headrace_peer", default=None)


def current_peer() -> PeerIdentity | None:
    return peer_var.get()


def method_allowed(role: Role, method: str) -> bool:
    if method.startswith(_OPEN_TO_PEERS):
        return True
    allowed = ACCESS[role]
    service = method.rsplit("/", 1)[0]
    return method in allowed or f"{service}/*" in allowed


def peer_from_auth_context(auth: Mapping[str, Iterable[bytes]]) -> PeerIdentity:
    """The peer named by a verified client certificate (gRPC checked its
    signature against our CA during the handshake)."""
    names = [value.decode() for value in auth.get("x509_common_name", ())]
    if not names:
        raise Unauthenticated("no client certificate: internal services accept only service peers")
    try:
        role = Role(names[0])
    except ValueError:
        raise PermissionDenied(f"certificate common name {names[0]!r} is not a Headrace role") from None
    hosts = frozenset(value.decode() for value in auth.get("x509_subject_alternative_name", ()))
    return PeerIdentity(role=role, hosts=hosts - {server_name(role)})


def admit(auth: Mapping[str, Iterable[bytes]], method: str, tenant: str | None) -> PeerIdentity:
    """The peer of one call, if it may make it; raises Unauthenticated or
    PermissionDenied. `tenant`: the call's x-headrace-tenant, if any."""
    peer = peer_from_auth_context(auth)
    if not method_allowed(peer.role, method):
        raise PermissionDenied(f"a {peer.role.value} may not call {method}")
    if tenant and peer.role not in TENANT_VOUCHERS:
        raise PermissionDenied(f"a {peer.role.value} may not act for a tenant (x-headrace-tenant)")
    return peer


@dataclass(frozen=True)
class ServiceIdentity:
    """This process's credential: its role's certificate and key, and the CA
    certificates (one or more: a bundle during CA rotation) it trusts."""

    role: Role
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


def load_identity(certs_dir: Path, role: Role) -> ServiceIdentity:
    try:
        return ServiceIdentity(
            role=role,
            ca_pem=(certs_dir / CA_CERT).read_bytes(),
            cert_pem=cert_path(certs_dir, role).read_bytes(),
            key_pem=key_path(certs_dir, role).read_bytes(),
        )
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read the {role.value} credential in {certs_dir} ({exc.strerror}: {exc.filename}); "
            f"make one with `headrace certs init DIR` or `headrace certs issue`"
        ) from exc


def service_identity(settings: Settings, role: Role) -> ServiceIdentity | None:
    """This process's identity when internal TLS is configured; None in open
    dev mode. With API keys configured, internal calls must be authenticated:
    no credential is then an error, not a quiet fallback to plaintext."""
    certs_dir = settings.internal_tls.certs_dir
    if certs_dir is None:
        if settings.auth_enabled:
            raise FailedPrecondition(
                "API keys are configured, so calls between services must be authenticated: set "
                "internal_tls.certs_dir (HEADRACE_INTERNAL_TLS__CERTS_DIR) to a folder made by "
                "`headrace certs init DIR` (`headrace up` makes one by itself)"
            )
        return None
    return load_identity(certs_dir, role)
