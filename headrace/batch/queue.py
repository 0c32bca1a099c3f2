"""The batch queue: Celery on the Redis broker, one queue per model pool.

One Celery app factory for both ends (the scheduler publishes, the consumer
beside each worker consumes), one table of task names and their queues,
and one decorator every batch task is declared through. After Sentry's
`instrumented_task`: a task has an explicit, stable name (renaming a module
must not orphan queued messages), carries ids rather than payloads (the
rows stay in Redis, the message says which job and chunk), and is counted
and timed in one place.

Delivery: acks_late, so a message is acknowledged only when its chunk has
run; a consumer killed mid-chunk leaves it unacknowledged, and the sweep of
any live consumer hands it out again once its visibility timeout passes.
The timeout is short (seconds): a live consumer renews the messages it
holds (services/worker/consumer/visibility.py), a dead one stops. Rows
are idempotent (store.record writes a result once), so running a chunk
twice writes nothing twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from celery import Celery, Task
from celery.exceptions import Retry
from prometheus_client import Counter, Histogram

from headrace.runtime.config import Settings

log = logging.getLogger(__name__)

# The task names, stable on purpose: queued messages refer to them.
RUN_CHUNK = "headrace.batch.run_chunk"


def queue_name(pool: str) -> str:
    """The Celery queue of a model pool's batch work."""
    return f"headrace.batch.{pool}"


def consumer_name(pool: str, index: int) -> str:
    """The consumer beside worker `index` of `pool`."""
    return f"batch-{pool}-{index}"


def consumer_heartbeat_key(settings: Settings, name: str) -> str:
    """A Redis key a ready consumer keeps fresh (`headrace up` and `status` read it)."""
    return f"{settings.batch.key_prefix}consumer:{name}"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    # The queue a message goes to, from the pool it is for.
    queue: Callable[[str], str]


# The one table of batch tasks and where they are routed.
TASKS: dict[str, TaskSpec] = {RUN_CHUNK: TaskSpec(RUN_CHUNK, queue_name)}

TASKS_RUN = Counter("headrace_batch_tasks_total", "Batch tasks run, by outcome", ["task", "outcome"])
TASK_SECONDS = Histogram(
    "headrace_batch_task_seconds",
    "Time to run one batch task",
    ["task"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)


def build_celery_app(settings: Settings, *, name: str = "headrace-batch") -> Celery:
    """A Celery app on the batch broker; not made the process's current app
    (no global state: the scheduler and each consumer build their own)."""
    batch = settings.batch
    app = Celery(name, broker=batch.broker_url or settings.redis_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        # A consumer process that dies mid-task gives the message back, and
        # a task that fails is not acknowledged either (so not dropped).
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=False,
        # One message at a time per execution slot: a killed consumer holds
        # back no more than it was running.
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_create_missing_queues=True,
        broker_transport_options={
            # The queues live under the batch key prefix, beside the jobs.
            "global_keyprefix": batch.key_prefix,
            "visibility_timeout": batch.visibility_timeout_s,
            # Look for messages past their visibility timeout this often
            # (every sweep, not every tenth).
            "unacked_restore_interval": batch.restore_interval_s,
            "unacked_restore_throttle": 1,
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
        },
        broker_connection_retry_on_startup=True,
        # Keep reconnecting through a Redis restart.
        broker_connection_max_retries=None,
        # A publish during a Redis restart is retried rather than lost.
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 20, "interval_start": 0.1, "interval_step": 0.25, "interval_max": 1},
        worker_hijack_root_logger=False,
        # What tools see: `celery inspect` answers through remote control;
        # Flower and `celery events` follow the events (sent when queued too).
        worker_send_task_events=batch.events,
        task_send_sent_event=batch.events,
        worker_enable_remote_control=batch.remote_control,
        # Running chunks finish across a broker reconnect; if their ack is
        # lost, the redelivery finds every row done.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


F = TypeVar("F", bound=Callable[..., Any])


def batch_task(app: Celery, *, name: str, **options: Any) -> Callable[[F], Task]:
    """Declare a batch task on `app`: its name must be one of TASKS, it is
    bound (gets `self`), late-acknowledged, and counted and timed."""
    if name not in TASKS:
        raise ValueError(f"batch task {name!r} is not in headrace.batch.queue.TASKS; add it there first")

    def decorate(fn: F) -> Task:
        @functools.wraps(fn)
        def run(self: Task, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            outcome = "error"
            try:
                result = fn(self, *args, **kwargs)
                outcome = "ok"
                return result
            except Retry:
                outcome = "retry"
                raise
            finally:
                TASKS_RUN.labels(task=name, outcome=outcome).inc()
                TASK_SECONDS.labels(task=name).observe(time.monotonic() - started)

        # shared=False: Celery would otherwise hand this task to every app
        # created later in the process (a global registry), bound to this
        # app's collaborators.
        task: Task = app.task(name=name, bind=True, acks_late=True, ignore_result=True, shared=False, **options)(run)
        return task

    return decorate


def trace_carrier(request: Any) -> dict[str, str]:
    """The W3C trace headers a task message carries."""
    headers = getattr(request, "headers", None) or {}
    return {k: str(v) for k, v in headers.items() if k in ("traceparent", "tracestate")}


class ChunkPublisher(Protocol):
    """Puts a job's chunk tasks on its pool's queue."""

    async def publish(self, *, pool: str, batch_id: str, chunks: int, headers: Mapping[str, str]) -> None: ...


class CeleryChunkPublisher:
    def __init__(self, app: Celery) -> None:
        self._app = app

    async def publish(self, *, pool: str, batch_id: str, chunks: int, headers: Mapping[str, str]) -> None:
        # kombu publishes synchronously: off the event loop.
        await asyncio.to_thread(self._publish, pool, batch_id, chunks, dict(headers))

    def _publish(self, pool: str, batch_id: str, chunks: int, headers: dict[str, str]) -> None:
        spec = TASKS[RUN_CHUNK]
        with self._app.producer_or_acquire() as producer:
            for index in range(chunks):
                self._app.send_task(
                    spec.name,
                    args=[batch_id, index],
                    queue=spec.queue(pool),
                    headers=headers,
                    producer=producer,
                    ignore_result=True,
                )

    def close(self) -> None:
        self._app.close()
