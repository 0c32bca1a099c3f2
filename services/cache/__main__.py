"""python -m services.cache: the Cache service."""

from __future__ import annotations

import redis.asyncio as redis
from opentelemetry.sdk.trace import TracerProvider

from headrace.runtime.aio import run
from headrace.runtime.config import Settings, load_settings
from headrace.runtime.server import GrpcServiceHost, ServiceRegistration, serve
from headrace.runtime.telemetry import build_tracer_provider, configure_logging, start_metrics_server
from headrace.v1 import cache_pb2_grpc
from services.cache.exact_store import ExactStore
from services.cache.server import CacheServicer


def build_host(
    settings: Settings,
    client: redis.Redis,
    *,
    port: int | None = None,
    tracer_provider: TracerProvider | None = None,
) -> GrpcServiceHost:
    servicer = CacheServicer(ExactStore(client), settings.cache)
    return GrpcServiceHost(
        [ServiceRegistration("headrace.v1.Cache", lambda s: cache_pb2_grpc.add_CacheServicer_to_server(servicer, s))],
        host=settings.cache.host,
        port=settings.cache.port if port is None else port,
        limits=settings.limits,
        tracer_provider=tracer_provider or build_tracer_provider("headrace-cache", settings.telemetry),
    )


async def main(settings: Settings) -> None:
    start_metrics_server(settings.cache.host, settings.cache.metrics_port)
    client = redis.Redis.from_url(settings.redis_url)
    await client.ping()
    await serve(build_host(settings, client), after_stop=client.aclose)


if __name__ == "__main__":
    settings = load_settings()
    configure_logging("cache", settings.telemetry.log_level)
    run(main(settings))
