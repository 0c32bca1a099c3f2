"""A batch consumer, wired: the Celery app with its task, and on a loop
thread the job store, the gRPC client of the local worker, the row leases
from the scheduler and the chunk runner; plus a heartbeat in Redis that
says the consumer is ready (what `headrace up` and `status` look at)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from celery import Celery, bootsteps
from celery.apps.worker import Worker
from opentelemetry.trace import TracerProvider

from headrace.batch.queue import build_celery_app, consumer_heartbeat_key, consumer_name, queue_name
from headrace.batch.store import BatchStore, open_redis
from headrace.runtime.config import Settings
from headrace.runtime.gc_policy import freeze_startup_heap
from headrace.runtime.scheduler_replicas import SchedulerReplicas
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import service_identity
from headrace.runtime.telemetry import build_tracer_provider
from services.worker.consumer.attempt_errors import ChunkTimedOut
from services.worker.consumer.chunk_runner import ChunkRunner
from services.worker.consumer.loop_thread import LoopThread
from services.worker.consumer.row_leases import RowLeases
from services.worker.consumer.tasks import register_batch_tasks
from services.worker.consumer.visibility import VisibilityExtender, delivered_tags
from services.worker.consumer.worker_client import WorkerClient

log = logging.getLogger(__name__)

HEARTBEAT_TTL_S = 10
HEARTBEAT_EVERY_S = 2.0


def scheduler_targets(settings: Settings) -> list[str]:
    """Where the consumer asks for its rows' leases: every scheduler replica."""
    return settings.scheduler.targets()


class BatchConsumer:
    def __init__(
        self,
        settings: Settings,
        *,
        pool: str,
        index: int,
        worker_address: str,
        worker_id: str | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if pool not in settings.pools:
            raise SystemExit(f"unknown pool {pool!r}; configured: {', '.join(sorted(settings.pools))}")
        self.settings = settings
        self.pool = pool
        self.name = consumer_name(pool, index)
        # The worker whose slots its rows are leased on (by default, worker
        # N of the pool: the one it runs beside).
        self._worker_id = worker_id or f"{pool}-{index}"
        self._worker_address = worker_address
        self._tracer_provider = tracer_provider or build_tracer_provider(
            f"headrace-batch-consumer-{self._worker_id}", settings.telemetry
        )
        self.app: Celery = build_celery_app(settings, name=self.name)
        register_batch_tasks(self.app, self, settings.batch)
        self.app.steps["consumer"].add(_heartbeat_step(self))
        self._loop = LoopThread(f"{self.name}-loop")
        self._loop.start()
        self._heartbeat: asyncio.Task[None] | None = None
        self._extender: asyncio.Task[None] | None = None
        # The Celery consumer (set by the heartbeat step): where the held messages are.
        self._celery_consumer: Any = None
        self.runner: ChunkRunner
        self.store: BatchStore
        self._client: WorkerClient
        self._leases: RowLeases
        self._schedulers: SchedulerReplicas
        self._loop.call(self._build(), timeout_s=30)

    async def _build(self) -> None:
        batch = self.settings.batch
        redis = open_redis(self.settings.redis_url)
        self.store = BatchStore(redis, prefix=batch.key_prefix, retention_s=batch.retention_s)
        identity = service_identity(self.settings, Role.CONSUMER)
        # Every row runs under the scheduler's lease on this worker.
        self._leases, self._schedulers = RowLeases.open(
            scheduler_targets(self.settings),
            self.settings.limits,
            identity,
            worker_id=self._worker_id,
            max_inflight=batch.max_inflight_rows,
            call_window_s=batch.lease_call_window_ms / 1000.0,
        )
        self._client = WorkerClient(
            self._worker_address,
            self.settings.limits,
            worker_id=self._worker_id,
            price_per_hour=self.settings.pools[self.pool].price_per_hour,
            rows_per_call=batch.rows_per_worker_call,
            call_timeout_s=batch.row_timeout_s,
            # Like the lease calls': the longer the more rows hold leases.
            call_window_s=self._leases.scaled_window(batch.worker_call_window_ms / 1000.0),
            identity=identity,
        )
        self.runner = ChunkRunner(
            store=self.store,
            client=self._client,
            leases=self._leases,
            settings=batch,
            # The pid tells a restarted consumer's rows from its predecessor's.
            consumer=f"{self.name}:{os.getpid()}",
            tracer=self._tracer_provider.get_tracer("headrace.worker.batch"),
        )

    # -- called from Celery's task threads

    def run_chunk(self, batch_id: str, chunk: int, carrier: dict[str, str]) -> None:
        try:
            self._loop.call(
                self.runner.run_chunk(batch_id, chunk, carrier), timeout_s=self.settings.batch.chunk_timeout_s
            )
        except TimeoutError as exc:
            raise ChunkTimedOut(f"chunk {chunk} of {batch_id} ran past {self.settings.batch.chunk_timeout_s}s") from exc

    def fail_chunk(self, batch_id: str, chunk: int, reason: str) -> None:
        self._loop.call(self.runner.fail_chunk(batch_id, chunk, reason), timeout_s=60)

    # -- the Celery worker

    def worker(self, **options: Any) -> Worker:
        """The Celery worker consuming this pool's queue (threads: each runs
        one chunk at a time; the rows themselves run on the loop thread)."""
        worker: Worker = self.app.Worker(
            hostname=f"{self.name}@{socket.gethostname()}",
            queues=[queue_name(self.pool)],
            pool_cls="threads",
            concurrency=self.settings.batch.consumer_chunks,
            # Heartbeat events tell Flower the consumer is online.
            without_heartbeat=not self.settings.batch.events,
            without_mingle=True,
            without_gossip=True,
            **options,
        )
        return worker

    def start_heartbeat(self, celery_consumer: Any = None) -> None:
        self._celery_consumer = celery_consumer
        self._loop.loop.call_soon_threadsafe(self._start_heartbeat)

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat(), name="batch-consumer-heartbeat")
        if self._extender is None:
            extender = VisibilityExtender(
                self.store.redis,
                key_prefix=self.settings.batch.key_prefix,
                visibility_timeout_s=self.settings.batch.visibility_timeout_s,
                held_tags=self._held_tags,
            )
            self._extender = asyncio.create_task(extender.run(), name="batch-visibility-renewal")

    def _held_tags(self) -> list[str]:
        """The messages this consumer holds unacknowledged (none while it reconnects)."""
        task_consumer = getattr(self._celery_consumer, "task_consumer", None)
        channel = getattr(task_consumer, "channel", None)
        return delivered_tags(getattr(channel, "qos", None))

    async def _beat(self) -> None:
        key = consumer_heartbeat_key(self.settings, self.name)
        while True:
            try:
                await self.store.redis.set(key, self.pool, ex=HEARTBEAT_TTL_S)
            except Exception:
                log.warning("heartbeat to Redis failed; retrying", exc_info=True)
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    async def _close(self) -> None:
        if self._extender is not None:
            self._extender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._extender
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            with contextlib.suppress(Exception):
                await self.store.redis.delete(consumer_heartbeat_key(self.settings, self.name))
        await self._leases.close()
        await self._schedulers.close()
        await self._client.close()
        await self.store.redis.aclose()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.call(self._close(), timeout_s=10)
        self._loop.stop()
        self.app.close()


def _heartbeat_step(consumer: BatchConsumer) -> type[bootsteps.StartStopStep]:
    """A bootstep of the Celery consumer: the heartbeat starts once it
    consumes from the broker."""

    class Heartbeat(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, parent: Any) -> None:
            # Started and consuming: what is alive now lives as long as the
            # process (gc_policy.py).
            freeze_startup_heap()
            consumer.start_heartbeat(parent)

    return Heartbeat
