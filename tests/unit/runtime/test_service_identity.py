"""Service identity: the certificates `headrace certs` makes, and who may
call what (the table every internal server checks per call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from click.testing import CliRunner
from cryptography import x509

from headrace import cli
from headrace.runtime.config import Settings, hash_api_key
from headrace.runtime.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from headrace.runtime.interceptors import ServerInterceptor
from headrace.runtime.request_context import current_tenant
from headrace.runtime.service_certs import Role, cert_path, init_deployment, issue, server_name
from headrace.runtime.service_identity import (
    ACCESS,
    PeerIdentity,
    admit,
    current_peer,
    load_identity,
    service_identity,
)


def auth_context(role: str, *hosts: str) -> dict[str, list[bytes]]:
    """What gRPC reports for a verified client certificate."""
    names = [f"{role}.headrace.internal", *hosts]
    return {"x509_common_name": [role.encode()], "x509_subject_alternative_name": [n.encode() for n in names]}


@pytest.mark.parametrize(
    ("role", "method", "allowed"),
    [
        ("router", "/headrace.v1.Cache/Store", True),
        ("router", "/headrace.v1.Scheduler/Place", True),
        ("router", "/headrace.v1.Worker/Generate", True),
        # The router never speaks for a worker.
        ("router", "/headrace.v1.Scheduler/ReportLoad", False),
        ("worker", "/headrace.v1.Scheduler/ReportLoad", True),
        ("worker", "/headrace.v1.Scheduler/Place", False),
        ("worker", "/headrace.v1.Cache/Lookup", False),
        # The coalesced cache calls: the router's alone (a peer that could
        # store would poison every tenant's answers).
        ("router", "/headrace.v1.Cache/LookupMany", True),
        ("router", "/headrace.v1.Cache/StoreMany", True),
        ("worker", "/headrace.v1.Cache/StoreMany", False),
        ("consumer", "/headrace.v1.Cache/StoreMany", False),
        ("admin", "/headrace.v1.Cache/LookupMany", False),
        ("scheduler", "/headrace.v1.Cache/StoreMany", False),
        ("worker", "/headrace.v1.Worker/Generate", False),
        # Nobody but a lease's kind of holder frees slots: a worker, the
        # operator's tools and the cache never release (one by one or many).
        ("worker", "/headrace.v1.Scheduler/Release", False),
        ("worker", "/headrace.v1.Scheduler/ReleaseMany", False),
        ("admin", "/headrace.v1.Scheduler/ReleaseMany", False),
        ("cache", "/headrace.v1.Scheduler/ReleaseMany", False),
        ("router", "/headrace.v1.Scheduler/ReleaseMany", True),
        ("consumer", "/headrace.v1.Scheduler/ReleaseMany", True),
        # Batch rows' places: the consumer's alone.
        ("consumer", "/headrace.v1.Scheduler/PlaceMany", True),
        ("router", "/headrace.v1.Scheduler/PlaceMany", False),
        ("worker", "/headrace.v1.Scheduler/PlaceMany", False),
        ("admin", "/headrace.v1.Scheduler/PlaceMany", False),
        ("cache", "/headrace.v1.Scheduler/PlaceMany", False),
        # Places on a slot free now (beside a cache lookup): the router's alone.
        ("router", "/headrace.v1.Scheduler/PlaceNowMany", True),
        ("consumer", "/headrace.v1.Scheduler/PlaceNowMany", False),
        ("worker", "/headrace.v1.Scheduler/PlaceNowMany", False),
        ("admin", "/headrace.v1.Scheduler/PlaceNowMany", False),
        ("cache", "/headrace.v1.Scheduler/PlaceNowMany", False),
        ("consumer", "/headrace.v1.Worker/Generate", True),
        # Whole answers in one call: the router's path (a consumer's rows go in GenerateBatch).
        ("router", "/headrace.v1.Worker/Complete", True),
        ("consumer", "/headrace.v1.Worker/Complete", False),
        ("worker", "/headrace.v1.Worker/Complete", False),
        ("admin", "/headrace.v1.Worker/Complete", False),
        ("consumer", "/headrace.v1.Scheduler/GetBatch", False),
        ("admin", "/headrace.v1.Scheduler/ListWorkers", True),
        ("admin", "/headrace.v1.Scheduler/GetFileContent", False),
        ("cache", "/headrace.v1.Worker/Generate", False),
        # Health and reflection: any peer of ours.
        ("cache", "/grpc.health.v1.Health/Check", True),
    ],
)
def test_each_role_may_make_only_its_own_calls(role: str, method: str, allowed: bool) -> None:
    if allowed:
        assert admit(auth_context(role), method, None).role == Role(role)
    else:
        with pytest.raises(PermissionDenied, match=f"a {role} may not call"):
            admit(auth_context(role), method, None)


@pytest.mark.parametrize("role", [r.value for r in Role])
def test_only_the_router_and_the_consumer_speak_for_a_tenant(role: str) -> None:
    # A method every role may call, so only the tenant decides.
    method = "/grpc.health.v1.Health/Check"
    if Role(role) in (Role.ROUTER, Role.CONSUMER):
        assert admit(auth_context(role), method, "acme").role == Role(role)
    else:
        with pytest.raises(PermissionDenied, match="may not act for a tenant"):
            admit(auth_context(role), method, "acme")


def test_no_certificate_or_a_stranger_is_refused() -> None:
    with pytest.raises(Unauthenticated):
        admit({}, "/headrace.v1.Cache/Lookup", None)
    with pytest.raises(PermissionDenied, match="not a Headrace role"):
        admit(auth_context("mallory"), "/grpc.health.v1.Health/Check", None)


def test_every_role_has_an_entry() -> None:
    assert set(ACCESS) == set(Role)


def test_a_worker_announces_only_hosts_its_certificate_names() -> None:
    peer = PeerIdentity(role=Role.WORKER, hosts=frozenset({"127.0.0.1", "::1", "gpu-3.internal"}))
    assert peer.may_announce("127.0.0.1:50061") and peer.may_announce("[::1]:50061")
    assert peer.may_announce("gpu-3.internal:50061")
    assert not peer.may_announce("10.66.6.6:50061") and not peer.may_announce("0.0.0.0:50061")


def test_a_wildcard_name_covers_one_label_as_in_tls() -> None:
    # A StatefulSet's pods: worker-smollm2-N.worker-smollm2 (deploy/k8s).
    peer = PeerIdentity(role=Role.WORKER, hosts=frozenset({"*.worker-smollm2"}))
    assert peer.may_announce("worker-smollm2-0.worker-smollm2:50061")
    assert peer.may_announce("worker-smollm2-12.worker-smollm2:50061")
    assert not peer.may_announce("worker-smollm2:50061")
    assert not peer.may_announce("a.b.worker-smollm2:50061")
    assert not peer.may_announce("x.worker-smollm2.evil:50061")
    assert not peer.may_announce("x.other-pool:50061")


def test_certs_init_makes_a_ca_and_every_role(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    init_deployment(certs, worker_hosts=["10.0.0.5"])
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    for role in Role:
        cert = x509.load_pem_x509_certificate(cert_path(certs, role).read_bytes())
        assert cert.issuer == ca.subject
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == role.value
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert server_name(role) in names.get_values_for_type(x509.DNSName)
        assert ((certs / f"{role.value}.key").stat().st_mode & 0o777) == 0o600
    worker = x509.load_pem_x509_certificate(cert_path(certs, Role.WORKER).read_bytes())
    ips = {
        str(ip)
        for ip in worker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.IPAddress
        )
    }
    assert ips == {"127.0.0.1", "::1", "10.0.0.5"}
    with pytest.raises(FileExistsError):
        init_deployment(certs)


def test_a_host_gets_its_own_roles_without_the_ca_key(tmp_path: Path) -> None:
    init_deployment(tmp_path / "ca")
    out = tmp_path / "gpu-host"
    issue(tmp_path / "ca", Role.WORKER, out_dir=out, hosts=["10.0.0.7"])
    issue(tmp_path / "ca", Role.CONSUMER, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.crt",
        "consumer.crt",
        "consumer.key",
        "worker.crt",
        "worker.key",
    ]
    assert load_identity(out, Role.WORKER).role == Role.WORKER


def test_with_api_keys_internal_calls_must_have_an_identity(tmp_path: Path) -> None:
    assert service_identity(Settings(), Role.ROUTER) is None
    keys = {"acme": {"api_key_sha256": [hash_api_key("k")]}}
    with pytest.raises(FailedPrecondition, match="internal_tls.certs_dir"):
        service_identity(Settings(tenants=keys), Role.ROUTER)
    with pytest.raises(FailedPrecondition, match="headrace certs init"):
        service_identity(Settings(tenants=keys, internal_tls={"certs_dir": str(tmp_path)}), Role.ROUTER)


class _Item:
    def __init__(self, key: str, value: str) -> None:
        self.key, self.value = key, value


class _PeerContext:
    """What a grpc.aio servicer context shows the interceptor of a call."""

    def __init__(self, auth: dict[str, list[bytes]], tenant: str) -> None:
        self._auth = auth
        self._metadata = (_Item("x-headrace-tenant", tenant),)
        self.aborted: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[_Item, ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str, trailing: Any = ()) -> None:
        self.aborted = code
        raise grpc.aio.AbortError()


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


async def test_the_interceptor_checks_the_peer_before_the_handler_runs() -> None:
    ran: list[tuple[str, Role | None]] = []

    async def behavior(request: Any, context: Any) -> str:
        peer = current_peer()
        ran.append((current_tenant(), peer.role if peer else None))
        return "ok"

    handler = grpc.unary_unary_rpc_method_handler(behavior)

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return handler

    interceptor = ServerInterceptor(authenticator=None, service_identity=True)
    wrapped = await interceptor.intercept_service(continuation, _Details("/headrace.v1.Cache/Store"))
    denied = _PeerContext(auth_context("worker", "127.0.0.1"), tenant="acme")
    with pytest.raises(grpc.aio.AbortError):
        await wrapped.unary_unary("req", denied)
    assert denied.aborted == grpc.StatusCode.PERMISSION_DENIED and ran == []
    assert await wrapped.unary_unary("req", _PeerContext(auth_context("router"), tenant="acme")) == "ok"
    assert ran == [("acme", Role.ROUTER)]


def test_the_cli_makes_a_deployment_and_a_hosts_credentials(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(cli.main, ["certs", "init", str(tmp_path / "ca"), "--worker-host", "10.0.0.5"])
    assert made.exit_code == 0, made.output
    assert "ca.key off the service hosts" in made.output
    again = runner.invoke(cli.main, ["certs", "init", str(tmp_path / "ca")])
    assert again.exit_code != 0 and "already holds a CA" in again.output
    host = tmp_path / "host"
    roles = ["--role", "worker", "--role", "consumer"]
    issued = runner.invoke(
        cli.main, ["certs", "issue", "--ca", str(tmp_path / "ca"), *roles, "--host", "10.0.0.7", "--out", str(host)]
    )
    assert issued.exit_code == 0, issued.output
    worker = load_identity(host, Role.WORKER)
    peer = x509.load_pem_x509_certificate(worker.cert_pem)
    names = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert not (host / "ca.key").exists()
