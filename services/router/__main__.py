"""python -m services.router: the Router service (public gRPC API)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
from opentelemetry.sdk.trace import TracerProvider

from headrace.runtime.aio import run
from headrace.runtime.auth import ApiKeyAuthenticator
from headrace.runtime.background import BackgroundTasks
from headrace.runtime.channels import ChannelPool, open_channel
from headrace.runtime.config import Settings, load_settings
from headrace.runtime.errors import HeadraceError
from headrace.runtime.server import GrpcServiceHost, ServiceRegistration, serve
from headrace.runtime.telemetry import build_tracer_provider, configure_logging, start_metrics_server
from headrace.v1 import cache_pb2_grpc, router_pb2_grpc, scheduler_pb2_grpc
from services.router.cache_client import CacheClient
from services.router.embedding_flow import EmbeddingFlow
from services.router.generation_flow import GenerationFlow
from services.router.leasing import Leasing
from services.router.model_registry import ModelRegistry
from services.router.routing.layer import RoutingLayer, routing_redis
from services.router.routing.reload import ConfigReloader
from services.router.server import RouterServicer


@dataclass
class RouterApp:
    """The router's parts, wired; `close` releases what they hold."""

    host: GrpcServiceHost
    close: Callable[[], Awaitable[None]]
    routing: RoutingLayer
    reloader: ConfigReloader


def build_router(
    settings: Settings,
    *,
    port: int | None = None,
    scheduler_target: str | None = None,
    cache_target: str | None = None,
    tracer_provider: TracerProvider | None = None,
    load_config: Callable[[], Settings] = load_settings,
) -> RouterApp:
    tracer_provider = tracer_provider or build_tracer_provider("headrace-router", settings.telemetry)
    scheduler_channel = open_channel(
        scheduler_target or f"{settings.scheduler.host}:{settings.scheduler.port}", settings.limits
    )
    cache_channel = open_channel(cache_target or f"{settings.cache.host}:{settings.cache.port}", settings.limits)
    scheduler = scheduler_pb2_grpc.SchedulerStub(scheduler_channel)
    cache = cache_pb2_grpc.CacheStub(cache_channel)
    workers = ChannelPool(settings.limits)
    background = BackgroundTasks()
    registry = ModelRegistry(settings)
    leasing = Leasing(scheduler, background, renew_margin_s=settings.router.lease_renew_margin_s)
    # Canary state and A/B statistics, shared by every router replica.
    redis = routing_redis(settings.redis_url)
    routing = RoutingLayer(settings, registry=registry, redis=redis, background=background)
    config_path = os.environ.get("HEADRACE_CONFIG")
    reloader = ConfigReloader(
        settings, load=load_config, apply=routing.reload, path=Path(config_path) if config_path else None
    )
    servicer = RouterServicer(
        settings=settings,
        registry=registry,
        routing=routing,
        reloader=reloader,
        generation=GenerationFlow(
            settings=settings,
            routing=routing,
            leasing=leasing,
            cache=CacheClient(cache, settings.cache),
            workers=workers,
            background=background,
        ),
        embedding=EmbeddingFlow(registry=registry, leasing=leasing, workers=workers),
        scheduler=scheduler,
        cache=cache,
    )
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
        authenticator=ApiKeyAuthenticator(settings.tenants),
    )

    async def close() -> None:
        await background.drain()
        await workers.close()
        channels: list[grpc.aio.Channel] = [scheduler_channel, cache_channel]
        for channel in channels:
            await channel.close()
        await redis.aclose()

    return RouterApp(host=host, close=close, routing=routing, reloader=reloader)


async def main(settings: Settings) -> None:
    start_metrics_server(settings.router.host, settings.router.metrics_port)
    app = build_router(settings)
    tasks: set[asyncio.Task[None]] = set()

    def reload_on_sighup() -> None:
        try:
            app.reloader.reload("SIGHUP")
        except HeadraceError:
            pass  # rejected and logged; the running config stays

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_on_sighup)
    if settings.routing.reload.watch:
        tasks.add(asyncio.create_task(app.reloader.watch(settings.routing.reload.poll_interval_s), name="config-watch"))

    async def after_stop() -> None:
        for task in tasks:
            task.cancel()
        await app.close()

    await serve(app.host, after_stop=after_stop)


if __name__ == "__main__":
    settings = load_settings()
    configure_logging("router", settings.telemetry.log_level)
    run(main(settings))
