"""The consumer's Celery task, declared through the one batch decorator."""

from __future__ import annotations

import logging
import random
from typing import Protocol

from celery import Celery, Task

from headrace.batch.queue import RUN_CHUNK, batch_task, trace_carrier
from headrace.runtime.config import BatchSettings
from services.worker.consumer.attempt_errors import ChunkTimedOut, WorkerUnavailable

log = logging.getLogger(__name__)


class ChunkExecutor(Protocol):
    def run_chunk(self, batch_id: str, chunk: int, carrier: dict[str, str]) -> None: ...

    def fail_chunk(self, batch_id: str, chunk: int, reason: str) -> None: ...


def chunk_retry_countdown_s(retries: int, settings: BatchSettings) -> float:
    """Exponential backoff with jitter for a chunk whose worker is down."""
    ceiling = min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2 ** (retries + 1))
    return float(ceiling * random.uniform(0.5, 1.0))


def register_batch_tasks(app: Celery, executor: ChunkExecutor, settings: BatchSettings) -> Task:
    @batch_task(app, name=RUN_CHUNK, max_retries=settings.chunk_max_retries)
    def run_chunk(self: Task, batch_id: str, chunk: int) -> None:
        # Ids only: the rows are read from the job store.
        try:
            executor.run_chunk(batch_id, chunk, trace_carrier(self.request))
        except (WorkerUnavailable, ChunkTimedOut) as exc:
            if self.request.retries >= settings.chunk_max_retries:
                executor.fail_chunk(batch_id, chunk, f"gave up after {self.request.retries} retries: {exc}")
                return
            raise self.retry(exc=exc, countdown=chunk_retry_countdown_s(self.request.retries, settings)) from exc
        except Exception as exc:
            # Anything else (Redis gone longer than its retries ride out, a
            # bug): the chunk is retried later, never dropped. Past the
            # retries the task fails unacknowledged, and Redis hands it out
            # again after the visibility timeout.
            log.warning("chunk %d of %s failed (%r); retrying", chunk, batch_id, exc)
            if self.request.retries >= settings.chunk_max_retries:
                raise
            raise self.retry(exc=exc, countdown=chunk_retry_countdown_s(self.request.retries, settings)) from exc

    return run_chunk
