"""Every attack on the internal services from issue 16, replayed against a
mesh with API keys (and so service identity) over real gRPC, with a real
Redis that wants a password: each must be refused, and the mesh must still
serve its tenants, online and batch.

The attacker dials the cache, scheduler and worker ports directly, as
someone on the host or the network can: in plaintext, over TLS without a
certificate, with a certificate from a CA of their own, and with a genuine
certificate of a role that may not make the call (one stolen credential)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import redis

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import hash_api_key
from headrace.runtime.service_certs import Role, init_deployment, server_name
from headrace.runtime.service_identity import ServiceIdentity, load_identity
from headrace.v1 import (
    batch_pb2,
    cache_pb2,
    cache_pb2_grpc,
    generation_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from tests.integration.batch.conftest import batch_settings
from tests.support.batch import chat_rows, running_consumer, wait_for_job
from tests.support.mesh import InProcessMesh, start_mesh

ACME = (("authorization", "Bearer acme-key"),)
GLOBEX = (("authorization", "Bearer globex-key"),)
FORGED_TENANT = (("x-headrace-tenant", "acme"),)


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis with a password, and the ACL user docs/security.md suggests
    for Headrace (no administration commands), which the mesh uses."""
    server = RedisServer(tmp_path_factory.mktemp("locked-redis"), appendonly=False, password="s3cret-for-tests")
    server.start()
    with redis.Redis.from_url(server.url) as admin:
        admin.execute_command("ACL", "SETUSER", "headrace", "on", ">acl-s3cret", "~*", "&*", "+@all", "-@admin")
    yield server
    server.stop()


def acl_url(server: RedisServer) -> str:
    return f"redis://headrace:acl-s3cret@127.0.0.1:{server.port}/0"


@pytest.fixture(scope="module")
async def mesh(locked_redis: RedisServer) -> AsyncIterator[InProcessMesh]:
    settings = batch_settings(
        acl_url(locked_redis),
        tenants={
            "acme": {"api_key_sha256": [hash_api_key("acme-key")]},
            "globex": {"api_key_sha256": [hash_api_key("globex-key")]},
        },
    )
    running = await start_mesh(settings)
    yield running
    await running.close()


@pytest.fixture(scope="module")
def foreign_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The attacker's own deployment: every role, signed by the wrong CA."""
    certs = tmp_path_factory.mktemp("foreign") / "certs"
    init_deployment(certs)
    return certs


def certs_dir(mesh: InProcessMesh) -> Path:
    assert mesh.settings.internal_tls.certs_dir is not None, "a mesh with keys has service identity"
    return mesh.settings.internal_tls.certs_dir


Dial = Callable[[str, Role], grpc.aio.Channel]


def plaintext(address: str, server: Role) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)


def tls_without_certificate(mesh: InProcessMesh) -> Dial:
    ca = (certs_dir(mesh) / "ca.crt").read_bytes()

    def dial(address: str, server: Role) -> grpc.aio.Channel:
        options = [("grpc.ssl_target_name_override", server_name(server))]
        return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca), options=options)

    return dial


def as_identity(identity: ServiceIdentity, *, trust: bytes | None = None) -> Dial:
    def dial(address: str, server: Role) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(trust or identity.ca_pem, identity.key_pem, identity.cert_pem)
        options = [("grpc.ssl_target_name_override", server_name(server))]
        return grpc.aio.secure_channel(address, credentials, options=options)

    return dial


def stolen(mesh: InProcessMesh, role: Role, address: str, server: Role) -> grpc.aio.Channel:
    """A channel with a genuine certificate of ours, of `role`."""
    return as_identity(load_identity(certs_dir(mesh), role))(address, server)


def attackers(mesh: InProcessMesh, foreign: Path) -> dict[str, Dial]:
    """Everyone without a credential of ours."""
    ours = (certs_dir(mesh) / "ca.crt").read_bytes()
    return {
        "plaintext": plaintext,
        "tls-no-cert": tls_without_certificate(mesh),
        # Their router certificate, trusting our CA so that only our check stops them.
        "foreign-ca": as_identity(load_identity(foreign, Role.ROUTER), trust=ours),
    }


async def refused(call: Awaitable[Any], *codes: grpc.StatusCode) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() in codes, caught.value
    return caught.value.code()


# Without a credential of ours the TLS handshake fails: no RPC reaches a handler.
HANDSHAKE_REFUSED = (grpc.StatusCode.UNAVAILABLE,)


def planted_store() -> cache_pb2.CacheStoreRequest:
    return cache_pb2.CacheStoreRequest(
        tenant="acme",
        model_version="smollm2@1",
        request=generation_pb2.GenerateRequest(
            prompt="what is 2+2?", sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=4)
        ),
        response=generation_pb2.GenerateResponse(text="PWNED"),
    )


async def test_the_cache_refuses_everyone_but_the_router(mesh: InProcessMesh, foreign_certs: Path) -> None:
    lookup = cache_pb2.CacheLookupRequest(tenant="acme", model_version="smollm2@1", request=planted_store().request)
    for dial in attackers(mesh, foreign_certs).values():
        async with dial(mesh.cache_address, Role.CACHE) as channel:
            stub = cache_pb2_grpc.CacheStub(channel)
            await refused(stub.Store(planted_store(), timeout=5), *HANDSHAKE_REFUSED)
            await refused(stub.Lookup(lookup, timeout=5), *HANDSHAKE_REFUSED)
            wipe = cache_pb2.InvalidateRequest(tenant="acme")
            await refused(stub.Invalidate(wipe, timeout=5), *HANDSHAKE_REFUSED)
    # One stolen credential of another role: a worker's, or the operator's.
    for role in (Role.WORKER, Role.ADMIN, Role.CONSUMER):
        async with stolen(mesh, role, mesh.cache_address, Role.CACHE) as channel:
            stub = cache_pb2_grpc.CacheStub(channel)
            await refused(stub.Store(planted_store(), timeout=5), grpc.StatusCode.PERMISSION_DENIED)
            await refused(stub.Lookup(lookup, timeout=5), grpc.StatusCode.PERMISSION_DENIED)
    # Nothing was planted: acme is served by the engine, not "PWNED".
    answer = await mesh.router_stub().Generate(planted_store().request, metadata=ACME)
    assert answer.text != "PWNED" and answer.route.cache == generation_pb2.CACHE_OUTCOME_MISS


async def test_the_scheduler_believes_no_forged_tenant(mesh: InProcessMesh, foreign_certs: Path) -> None:
    # acme has a job and a file: what the attack went for.
    job = await mesh.router_stub().SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(2)), metadata=ACME)
    reads: list[Callable[[scheduler_pb2_grpc.SchedulerStub], Awaitable[Any]]] = [
        lambda s: s.ListBatches(batch_pb2.ListBatchesRequest(), metadata=FORGED_TENANT, timeout=5),
        lambda s: s.GetBatch(batch_pb2.GetBatchRequest(batch_id=job.id), metadata=FORGED_TENANT, timeout=5),
        lambda s: s.GetFileContent(
            batch_pb2.GetFileContentRequest(file_id=job.input_file_id), metadata=FORGED_TENANT, timeout=5
        ),
    ]
    for dial in attackers(mesh, foreign_certs).values():
        async with dial(mesh.scheduler_address, Role.SCHEDULER) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            for read in reads:
                await refused(read(stub), *HANDSHAKE_REFUSED)
    for role in (Role.WORKER, Role.ADMIN):
        async with stolen(mesh, role, mesh.scheduler_address, Role.SCHEDULER) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            for read in reads:
                await refused(read(stub), grpc.StatusCode.PERMISSION_DENIED)
    # The operator's certificate reads status, but never for a tenant.
    async with stolen(mesh, Role.ADMIN, mesh.scheduler_address, Role.SCHEDULER) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        assert (await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5)).workers
        await refused(
            stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), metadata=FORGED_TENANT, timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    # acme itself, through the router, still sees its job.
    assert (await mesh.router_stub().GetBatch(batch_pb2.GetBatchRequest(batch_id=job.id), metadata=ACME)).id == job.id


async def test_no_lease_and_no_tokens_without_the_routers_identity(mesh: InProcessMesh, foreign_certs: Path) -> None:
    place = scheduler_pb2.PlaceRequest(request_id="attack", model_version="smollm2@1", tenant="acme", max_tokens=4)
    generate = worker_pb2.WorkerGenerateRequest(
        request_id="attack",
        model_version="smollm2@1",
        tenant="acme",
        request=generation_pb2.GenerateRequest(
            prompt="free tokens", sampling=generation_pb2.SamplingParams(max_tokens=4)
        ),
    )
    worker = mesh.workers[0].address
    for dial in attackers(mesh, foreign_certs).values():
        async with dial(mesh.scheduler_address, Role.SCHEDULER) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await refused(stub.Place(place, timeout=5), *HANDSHAKE_REFUSED)
        async with dial(worker, Role.WORKER) as channel:
            worker_stub = worker_pb2_grpc.WorkerStub(channel)
            await refused(_drain(worker_stub.Generate(generate, timeout=5)), *HANDSHAKE_REFUSED)
    for role in (Role.WORKER, Role.ADMIN, Role.CONSUMER):
        async with stolen(mesh, role, mesh.scheduler_address, Role.SCHEDULER) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await refused(stub.Place(place, timeout=5), grpc.StatusCode.PERMISSION_DENIED)
    # A consumer asks for batch leases on its worker, and nothing else.
    async with stolen(mesh, Role.CONSUMER, mesh.scheduler_address, Role.SCHEDULER) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        online_on_a_worker = scheduler_pb2.PlaceRequest(
            request_id="attack", model_version="smollm2@1", tenant="acme", worker_id="smollm2-0"
        )
        batch_anywhere = scheduler_pb2.PlaceRequest(
            request_id="attack", model_version="smollm2@1", tenant="acme", priority=generation_pb2.PRIORITY_BATCH
        )
        for request in (online_on_a_worker, batch_anywhere):
            await refused(stub.Place(request, timeout=5), grpc.StatusCode.PERMISSION_DENIED)
        # Nor through PlaceMany, which takes batch rows on a worker only.
        await refused(
            _drain(stub.PlaceMany(scheduler_pb2.PlaceManyRequest(places=[online_on_a_worker]), timeout=5)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    # PlaceMany is the consumer's alone: no other credential of ours, and
    # nobody without one, gets a batch row's lease through it.
    batch_row = scheduler_pb2.PlaceManyRequest(
        places=[
            scheduler_pb2.PlaceRequest(
                request_id="attack",
                model_version="smollm2@1",
                tenant="acme",
                priority=generation_pb2.PRIORITY_BATCH,
                worker_id="smollm2-0",
            )
        ]
    )
    for dial in attackers(mesh, foreign_certs).values():
        async with dial(mesh.scheduler_address, Role.SCHEDULER) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await refused(_drain(stub.PlaceMany(batch_row, timeout=5)), *HANDSHAKE_REFUSED)
    for role in (Role.ROUTER, Role.WORKER, Role.ADMIN, Role.CACHE):
        async with stolen(mesh, role, mesh.scheduler_address, Role.SCHEDULER) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await refused(_drain(stub.PlaceMany(batch_row, timeout=5)), grpc.StatusCode.PERMISSION_DENIED)
    # PlaceNowMany (places beside cache lookups) is the router's alone.
    place_now = scheduler_pb2.PlaceNowManyRequest(
        places=[
            scheduler_pb2.PlaceRequest(
                request_id="attack", model_version="smollm2@1", tenant="acme", max_tokens=4, only_if_free=True
            )
        ]
    )
    for dial in attackers(mesh, foreign_certs).values():
        async with dial(mesh.scheduler_address, Role.SCHEDULER) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await refused(stub.PlaceNowMany(place_now, timeout=5), *HANDSHAKE_REFUSED)
    for role in (Role.CONSUMER, Role.WORKER, Role.ADMIN, Role.CACHE):
        async with stolen(mesh, role, mesh.scheduler_address, Role.SCHEDULER) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await refused(stub.PlaceNowMany(place_now, timeout=5), grpc.StatusCode.PERMISSION_DENIED)
    assert len(mesh.dispatcher.leases) == 0
    # Nor tokens from a worker, streamed or whole (Complete: the router's alone).
    for dial in attackers(mesh, foreign_certs).values():
        async with dial(worker, Role.WORKER) as channel:
            await refused(worker_pb2_grpc.WorkerStub(channel).Complete(generate, timeout=5), *HANDSHAKE_REFUSED)
    for role in (Role.WORKER, Role.ADMIN):
        async with stolen(mesh, role, worker, Role.WORKER) as channel:
            worker_stub = worker_pb2_grpc.WorkerStub(channel)
            await refused(_drain(worker_stub.Generate(generate, timeout=5)), grpc.StatusCode.PERMISSION_DENIED)
            await refused(worker_stub.Complete(generate, timeout=5), grpc.StatusCode.PERMISSION_DENIED)
    async with stolen(mesh, Role.CONSUMER, worker, Role.WORKER) as channel:
        await refused(
            worker_pb2_grpc.WorkerStub(channel).Complete(generate, timeout=5), grpc.StatusCode.PERMISSION_DENIED
        )


async def _drain(call: Any) -> list[Any]:
    return [message async for message in call]


async def test_a_rogue_worker_cannot_register(mesh: InProcessMesh, foreign_certs: Path) -> None:
    rogue = scheduler_pb2.LoadReport(
        worker=scheduler_pb2.WorkerInfo(
            worker_id="rogue-0", endpoint="10.66.6.6:50061", pool="smollm2", models=["smollm2@1"], engine="synthetic"
        ),
        load=scheduler_pb2.WorkerLoad(capacity=1000, healthy=True),
    )

    # The blocking API, on a thread: grpc.aio may report a stream the server
    # ended while a message was being sent as INTERNAL, hiding the real status.
    async def report(credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
        return await asyncio.to_thread(report_load, mesh.scheduler_address, credentials, rogue)

    ca = (certs_dir(mesh) / "ca.crt").read_bytes()
    foreign = load_identity(foreign_certs, Role.ROUTER)
    for credentials in (
        None,
        grpc.ssl_channel_credentials(ca),
        grpc.ssl_channel_credentials(ca, foreign.key_pem, foreign.cert_pem),
    ):
        assert await report(credentials) in HANDSHAKE_REFUSED
    # A genuine worker certificate, stolen: it names this machine only, so
    # it cannot draw requests to the thief's host.
    worker = load_identity(certs_dir(mesh), Role.WORKER)
    assert await report(worker.channel_credentials()) == grpc.StatusCode.PERMISSION_DENIED
    # Nor may any other role report load (a worker's job only).
    router = load_identity(certs_dir(mesh), Role.ROUTER)
    assert await report(router.channel_credentials()) == grpc.StatusCode.PERMISSION_DENIED
    listing = await mesh.scheduler_stub().ListWorkers(scheduler_pb2.ListWorkersRequest())
    assert "rogue-0" not in {w.info.worker_id for w in listing.workers}
    answers = await asyncio.gather(
        *(
            mesh.router_stub().Generate(
                generation_pb2.GenerateRequest(prompt=f"q{i}", sampling=generation_pb2.SamplingParams(max_tokens=3)),
                metadata=ACME if i % 2 else (("authorization", "Bearer globex-key"),),
            )
            for i in range(20)
        )
    )
    assert {a.route.worker_id for a in answers} == {"smollm2-0"}


def report_load(
    address: str, credentials: grpc.ChannelCredentials | None, report: scheduler_pb2.LoadReport
) -> grpc.StatusCode:
    """One load report on a ReportLoad stream: the status the stream ends with."""
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        options = [("grpc.ssl_target_name_override", server_name(Role.SCHEDULER))]
        channel = grpc.secure_channel(address, credentials, options=options)
    with channel:
        try:
            for _ack in scheduler_pb2_grpc.SchedulerStub(channel).ReportLoad(iter([report]), timeout=5):
                pass
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_redis_wants_its_password(locked_redis: RedisServer) -> None:
    open_url = f"redis://127.0.0.1:{locked_redis.port}/0"
    with redis.Redis.from_url(open_url) as client, pytest.raises(redis.AuthenticationError):
        client.ping()
    with redis.Redis.from_url(locked_redis.url) as client:
        assert client.ping()
    # Headrace's ACL user may not administer Redis.
    with redis.Redis.from_url(acl_url(locked_redis)) as client, pytest.raises(redis.exceptions.NoPermissionError):
        client.config_set("requirepass", "")


async def test_the_mesh_still_serves_online_and_batch(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    hello = generation_pb2.GenerateRequest(prompt="hello", sampling=generation_pb2.SamplingParams(max_tokens=5))
    answer = await stub.Generate(hello, metadata=ACME)
    assert answer.usage.completion_tokens == 5 and answer.route.worker_id == "smollm2-0"
    # Batch: the consumer (its own certificate) runs the rows on the worker,
    # vouching for the job's tenant; the router forwards acme's reads.
    async with running_consumer(mesh.settings, pool="smollm2", worker_address=mesh.workers[0].address):
        job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(6)), metadata=ACME)
        done = await wait_for_job(stub, job.id, metadata=ACME)
    assert done.status == batch_pb2.BATCH_STATUS_COMPLETED, done
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
    # globex cannot see it.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=job.id), metadata=GLOBEX)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
