"""The whole mesh in the test's process: real gRPC servers on loopback
ports, a real Redis, real workers (engines per the settings). Built from
the same factories the services' __main__ modules use."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc.aio
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider

from headrace.runtime.channels import open_channel
from headrace.runtime.config import Settings
from headrace.runtime.server import GrpcServiceHost
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import service_identity
from headrace.v1 import router_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, worker_pb2_grpc
from services.cache.__main__ import CacheApp, build_cache
from services.cache.embedder import TextEncoder
from services.router.__main__ import RouterApp, build_router
from services.scheduler.__main__ import build_dispatcher
from services.scheduler.__main__ import build_host as build_scheduler_host
from services.scheduler.batch_wiring import BatchService, build_batch_service
from services.scheduler.dispatcher import Dispatcher
from services.worker.__main__ import WorkerApp, build_worker, start_worker
from tests.support.identity import with_service_identity


@dataclass
class RunningWorker:
    app: WorkerApp
    address: str
    stopped: bool = False


@dataclass
class InProcessMesh:
    settings: Settings
    dispatcher: Dispatcher
    scheduler_host: GrpcServiceHost
    cache_host: GrpcServiceHost
    router: RouterApp
    redis: aioredis.Redis
    scheduler_address: str
    cache_address: str
    router_address: str
    workers: list[RunningWorker] = field(default_factory=list)
    tracer_provider: TracerProvider | None = None
    cache_app: CacheApp | None = None
    # The router's HTTP gateway, when started (start_mesh(..., http=True)).
    http_url: str = ""
    batch: BatchService | None = None
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, address: str) -> grpc.aio.Channel:
        """A channel to one of the mesh's servers. To the internal ones the
        test calls as the router (with its certificate when the mesh has
        service identity); the router's own port is public."""
        if address == self.router_address:
            channel = grpc.aio.insecure_channel(address)
        else:
            identity = service_identity(self.settings, Role.ROUTER)
            channel = open_channel(address, self.settings.limits, identity, server=self._role_at(address))
        self._channels.append(channel)
        return channel

    def _role_at(self, address: str) -> Role:
        if address == self.scheduler_address:
            return Role.SCHEDULER
        if address == self.cache_address:
            return Role.CACHE
        return Role.WORKER

    def router_stub(self) -> router_pb2_grpc.RouterStub:
        return router_pb2_grpc.RouterStub(self.channel(self.router_address))

    def scheduler_stub(self) -> scheduler_pb2_grpc.SchedulerStub:
        return scheduler_pb2_grpc.SchedulerStub(self.channel(self.scheduler_address))

    def worker_stub(self, index: int = 0) -> worker_pb2_grpc.WorkerStub:
        return worker_pb2_grpc.WorkerStub(self.channel(self.workers[index].address))

    async def add_worker(self, pool: str, index: int, settings: Settings | None = None) -> RunningWorker:
        app = build_worker(
            settings or self.settings,
            pool=pool,
            index=index,
            port=0,
            scheduler_targets=[self.scheduler_address],
            tracer_provider=self.tracer_provider,
        )
        port = await start_worker(app)
        worker = RunningWorker(app=app, address=f"127.0.0.1:{port}")
        self.workers.append(worker)
        return worker

    async def stop_worker(self, worker: RunningWorker, *, grace_s: float = 0.5) -> None:
        if worker.stopped:
            return
        worker.stopped = True
        await worker.app.host.stop(grace_s)
        await worker.app.close()

    async def wait_for_workers(self, count: int, timeout_s: float = 10.0) -> None:
        stub = self.scheduler_stub()
        deadline = time.monotonic() + timeout_s
        while True:
            listing = await stub.ListWorkers(scheduler_pb2.ListWorkersRequest())
            if sum(1 for w in listing.workers if w.accepting) >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} workers did not register in {timeout_s}s: {listing}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        await self.router.host.stop(0.5)
        await self.router.close()
        for worker in self.workers:
            await self.stop_worker(worker)
        await self.cache_host.stop(0.5)
        if self.cache_app is not None:
            await self.cache_app.close()
        await self.scheduler_host.stop(0.5)
        await self.dispatcher.close()
        if self.batch is not None:
            await self.batch.close()
        await self.redis.aclose()


async def start_mesh(
    settings: Settings,
    *,
    tracer_provider: TracerProvider | None = None,
    encoder: TextEncoder | None = None,
    http: bool = False,
) -> InProcessMesh:
    """`encoder`: a loaded embedding model, for meshes with the semantic cache
    on. `http`: also start the router's HTTP gateway, on a free port
    (mesh.http_url). With API keys configured, the mesh gets service
    certificates (as from `headrace up`): mesh.settings has them."""
    settings = with_service_identity(settings)
    dispatcher = build_dispatcher(settings)
    await dispatcher.start()
    batch = build_batch_service(settings, tracer_provider, choose_pool=dispatcher.batch_pool)
    await batch.start()
    scheduler_host = build_scheduler_host(
        settings, dispatcher, port=0, tracer_provider=tracer_provider, batches=batch.rpcs
    )
    scheduler_port = await scheduler_host.start()
    scheduler_address = f"127.0.0.1:{scheduler_port}"
    # What reads the settings to find the scheduler (batch consumers asking
    # for their rows' leases) finds this one.
    settings = settings.model_copy(update={"scheduler": settings.scheduler.model_copy(update={"port": scheduler_port})})
    redis_client = aioredis.Redis.from_url(settings.redis_url)
    cache_app = build_cache(settings, redis_client, encoder=encoder, port=0, tracer_provider=tracer_provider)
    await cache_app.start()
    cache_host = cache_app.host
    cache_address = f"127.0.0.1:{await cache_host.start()}"
    router = build_router(
        settings,
        port=0,
        http_port=0,
        scheduler_target=scheduler_address,
        cache_target=cache_address,
        tracer_provider=tracer_provider,
    )
    router_address = f"127.0.0.1:{await router.host.start()}"
    http_url = ""
    if http:
        assert router.http is not None, "gateway.enabled is off in these settings"
        await router.http.start()
        http_url = router.http.url
    mesh = InProcessMesh(
        settings=settings,
        dispatcher=dispatcher,
        scheduler_host=scheduler_host,
        cache_host=cache_host,
        router=router,
        redis=redis_client,
        scheduler_address=scheduler_address,
        cache_address=cache_address,
        router_address=router_address,
        tracer_provider=tracer_provider,
        cache_app=cache_app,
        http_url=http_url,
        batch=batch,
    )
    expected = 0
    for pool, spec in settings.pools.items():
        for index in range(spec.workers):
            await mesh.add_worker(pool, index)
            expected += 1
    await mesh.wait_for_workers(expected)
    return mesh
