"""The scheduler's batch parts, wired: the job store on Redis, the Celery
publisher, BatchJobs and its RPC translation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.trace import TracerProvider

from headrace.batch.queue import CeleryChunkPublisher, build_celery_app
from headrace.batch.store import BatchStore, open_redis_for_requests
from headrace.runtime.config import Settings
from services.scheduler.batch_jobs import BatchJobs
from services.scheduler.batch_server import BatchRpcs


@dataclass
class BatchService:
    jobs: BatchJobs
    rpcs: BatchRpcs
    store: BatchStore
    publisher: CeleryChunkPublisher

    async def start(self) -> None:
        await self.jobs.start()

    async def close(self) -> None:
        await self.jobs.close()
        self.publisher.close()
        await self.store.redis.aclose()


def build_batch_service(
    settings: Settings,
    tracer_provider: TracerProvider | None = None,
    *,
    choose_pool: Callable[[str], str | None] | None = None,
) -> BatchService:
    """`choose_pool`: the pool a job of a model version runs on
    (Dispatcher.batch_pool); without it, the version's own pool."""
    batch = settings.batch
    # Callers wait on this store: bounded timeouts, a fast 503 when Redis is down.
    store = BatchStore(
        open_redis_for_requests(settings.redis_url, timeout_s=batch.store_timeout_s),
        prefix=batch.key_prefix,
        retention_s=batch.retention_s,
        max_block_ms=int(batch.store_timeout_s * 1000 / 2),
    )
    publisher = CeleryChunkPublisher(build_celery_app(settings, name="headrace-scheduler"))
    tracer = tracer_provider.get_tracer("headrace.scheduler.batch") if tracer_provider is not None else None
    jobs = BatchJobs(settings=settings, store=store, publisher=publisher, tracer=tracer, choose_pool=choose_pool)
    rpcs = BatchRpcs(jobs, store_retry_after_s=batch.store_unavailable_retry_after_s)
    return BatchService(jobs=jobs, rpcs=rpcs, store=store, publisher=publisher)
