"""python -m services.router: the Router service (public gRPC API)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter
from opentelemetry.sdk.trace import TracerProvider

from headrace.models.registry import ModelRegistry
from headrace.runtime.aio import run
from headrace.runtime.auth import ApiKeyAuthenticator
from headrace.runtime.background import BackgroundTasks
from headrace.runtime.channels import ChannelPool, open_channel
from headrace.runtime.config import Settings, load_settings
from headrace.runtime.errors import HeadraceError
from headrace.runtime.scheduler_replicas import SchedulerReplicas
from headrace.runtime.server import GrpcServiceHost, ServiceRegistration, serve
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import service_identity
from headrace.runtime.telemetry import build_tracer_provider, configure_logging, start_metrics_server
from headrace.v1 import cache_pb2_grpc, router_pb2_grpc
from services.router.batch_forwarding import BatchForwarder
from services.router.cache_client import CacheClient
from services.router.embedding_flow import EmbeddingFlow
from services.router.gateway import GatewayServices, HttpServer, build_gateway_app
from services.router.gateway.batch_routers import batch_routers
from services.router.generation_flow import GenerationFlow
from services.router.leasing import Leasing
from services.router.rate_limited_flows import RateLimitedEmbedding, RateLimitedGeneration
from services.router.rate_limits import TenantRateLimiter, connect_limiter_redis
from services.router.routing.layer import RoutingLayer, routing_redis
from services.router.routing.reload import ConfigReloader
from services.router.server import RouterServicer
from services.router.workers import MeshWorkers


@dataclass
class Readiness:
    """False once the router is stopping (the gateway's /healthz says 503)."""

    serving: bool = True


@dataclass
class RouterApp:
    """The router's parts, wired; `close` releases what they hold."""

    host: GrpcServiceHost
    close: Callable[[], Awaitable[None]]
    routing: RoutingLayer
    reloader: ConfigReloader
    # The HTTP gateway (not started yet); None when gateway.enabled is off.
    http: HttpServer | None = None
    readiness: Readiness = field(default_factory=Readiness)


def build_router(
    settings: Settings,
    *,
    port: int | None = None,
    http_port: int | None = None,
    scheduler_target: str | None = None,
    cache_target: str | None = None,
    tracer_provider: TracerProvider | None = None,
    http_routers: Sequence[APIRouter] = (),
    load_config: Callable[[], Settings] = load_settings,
) -> RouterApp:
    """`http_routers`: more APIRouters for the gateway, beside /v1/files and /v1/batches."""
    tracer_provider = tracer_provider or build_tracer_provider("headrace-router", settings.telemetry)
    # The router's own credential for the internal hops (its public port
    # authenticates API keys instead).
    identity = service_identity(settings, Role.ROUTER)
    # Every scheduler replica: leases from any (with failover), batch and
    # listing calls balanced over all.
    schedulers = SchedulerReplicas(
        [scheduler_target] if scheduler_target else settings.scheduler.targets(), settings.limits, identity
    )
    cache_channel = open_channel(
        cache_target or f"{settings.cache.host}:{settings.cache.port}", settings.limits, identity, server=Role.CACHE
    )
    scheduler = schedulers.any_replica
    cache = cache_pb2_grpc.CacheStub(cache_channel)
    workers = ChannelPool(settings.limits, identity, server=Role.WORKER)
    background = BackgroundTasks()
    registry = ModelRegistry(settings)
    leasing = Leasing(schedulers, background, renew_margin_s=settings.router.lease_renew_margin_s)
    # Canary state and A/B statistics, shared by every router replica.
    redis = routing_redis(settings.redis_url)
    routing = RoutingLayer(settings, registry=registry, redis=redis, background=background)
    config_path = os.environ.get("HEADRACE_CONFIG")
    reloader = ConfigReloader(
        settings, load=load_config, apply=routing.reload, path=Path(config_path) if config_path else None
    )
    # Rate limits and quotas wrap the flows: both APIs pass through them.
    limiter_redis = connect_limiter_redis(settings.redis_url)
    limiter = TenantRateLimiter(limiter_redis)
    generation = RateLimitedGeneration(
        GenerationFlow(
            routing=routing,
            workers=MeshWorkers(leasing, workers),
            cache=CacheClient(cache, settings.cache, max_message_bytes=settings.limits.max_message_bytes),
            background=background,
        ),
        limiter=limiter,
        settings=settings,
        background=background,
    )
    embedding = RateLimitedEmbedding(
        EmbeddingFlow(registry=registry, leasing=leasing, workers=workers),
        limiter=limiter,
        settings=settings,
        background=background,
    )
    # Batch jobs and files, for both doors (gRPC and HTTP).
    batches = BatchForwarder(scheduler)
    servicer = RouterServicer(
        settings=settings,
        registry=registry,
        routing=routing,
        reloader=reloader,
        generation=generation,
        embedding=embedding,
        scheduler=scheduler,
        batches=batches,
        cache=cache,
    )
    authenticator = ApiKeyAuthenticator(settings.tenants)
    host = GrpcServiceHost(
        [
            ServiceRegistration(
                "headrace.v1.Router", lambda s: router_pb2_grpc.add_RouterServicer_to_server(servicer, s)
            )
        ],
        host=settings.router.host,
        port=settings.router.port if port is None else port,
        limits=settings.limits,
        tracer_provider=tracer_provider,
        authenticator=authenticator,
        # The public door: API keys, not service certificates.
        identity=None,
    )
    readiness = Readiness()
    http: HttpServer | None = None
    if settings.gateway.enabled:
        gateway = build_gateway_app(
            GatewayServices(settings=settings, generation=generation, embedding=embedding, registry=registry),
            authenticator=authenticator,
            # /v1/files and /v1/batches: behind the same middleware and errors.
            extra_routers=[
                *batch_routers(batches, settings),
                *http_routers,
            ],
            serving=lambda: readiness.serving,
            tracer_provider=tracer_provider,
        )
        # On the router's host: open dev mode's loopback-only rule covers it.
        http = HttpServer(
            gateway,
            host=settings.router.host,
            port=settings.router.http_port if http_port is None else http_port,
            settings=settings.gateway,
        )

    async def close() -> None:
        readiness.serving = False
        if http is not None:
            await http.stop()
        await background.drain()
        await workers.close()
        await schedulers.close()
        await cache_channel.close()
        await limiter_redis.aclose()
        await redis.aclose()

    return RouterApp(host=host, close=close, routing=routing, reloader=reloader, http=http, readiness=readiness)


async def main(settings: Settings) -> None:
    start_metrics_server(settings.router.host, settings.router.metrics_port)
    app = build_router(settings)
    http = app.http
    if http is not None:
        # Now, before anything serves: a taken port stops the router at start.
        http.bind()
    tasks: set[asyncio.Task[None]] = set()

    def reload_on_sighup() -> None:
        try:
            app.reloader.reload("SIGHUP")
        except HeadraceError:
            pass  # rejected and logged; the running config stays

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_on_sighup)
    if settings.routing.reload.watch:
        tasks.add(asyncio.create_task(app.reloader.watch(settings.routing.reload.poll_interval_s), name="config-watch"))

    async def start_http() -> None:
        if http is not None:
            await http.start()

    async def stop_http() -> None:
        app.readiness.serving = False
        if http is not None:
            await http.stop()

    async def after_stop() -> None:
        for task in tasks:
            task.cancel()
        await app.close()

    await serve(app.host, after_start=start_http, before_stop=stop_http, after_stop=after_stop)


if __name__ == "__main__":
    settings = load_settings()
    configure_logging("router", settings.telemetry.log_level)
    run(main(settings))
