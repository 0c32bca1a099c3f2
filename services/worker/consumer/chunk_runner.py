"""One chunk task: the rows of one chunk of one job, each sent to the local
worker and its result written once. Knows nothing of Celery.

For each row without a result:

    a lease of the batch class from the scheduler (row_leases.py) ->
    store.begin_attempt (is the job still running? counts the attempt) ->
    worker -> store.record (first write wins) -> the lease back

A failed attempt that may succeed later is retried after a backoff with
jitter, up to row_max_attempts; then, or at once for a row the worker
rejects as invalid, the row's result is an error with the reason, and the
job goes on. Attempts are counted in Redis, so a row that kills its
consumer every time still ends up in the error file.

A row is sent preemptible the first time: the worker may stop it to make
room for online work. A preempted attempt does not count; the row is sent
again at once, not preemptible, so it is retried exactly once more and
never lost (the result is written once either way).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from opentelemetry import propagate, trace

from headrace.batch.output_lines import row_request_id
from headrace.batch.store import BatchStore, JobRecord, StoredRow
from headrace.runtime.config import BatchSettings
from headrace.runtime.request_context import request_id_var
from headrace.v1 import batch_pb2, generation_pb2, scheduler_pb2
from services.worker.consumer.attempt_errors import PREEMPTED, AttemptError, WorkerUnavailable
from services.worker.consumer.row_leases import HeldLease, RowAsk, RowLeases, embed_ask, generate_ask

log = logging.getLogger(__name__)


class RowClient(Protocol):
    """What the runner needs of the worker."""

    async def generate(
        self,
        request: generation_pb2.GenerateRequest,
        *,
        model_version: str,
        request_id: str,
        tenant: str,
        timeout_s: float,
        preemptible: bool = False,
    ) -> generation_pb2.GenerateResponse: ...

    async def embed(
        self, request: generation_pb2.EmbedRequest, *, request_id: str, tenant: str, timeout_s: float
    ) -> generation_pb2.EmbedResponse: ...

    async def reachable(self) -> bool: ...


def row_error(row: StoredRow, code: str, message: str) -> batch_pb2.BatchResult:
    return batch_pb2.BatchResult(
        custom_id=row.custom_id,
        line=row.line,
        error=batch_pb2.BatchRowError(code=code, message=message),
        finished_at=int(time.time()),
    )


class ChunkRunner:
    def __init__(
        self,
        *,
        store: BatchStore,
        client: RowClient,
        leases: RowLeases,
        settings: BatchSettings,
        consumer: str,
        tracer: trace.Tracer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._leases = leases
        self._settings = settings
        self._consumer = consumer
        self._tracer = tracer or trace.get_tracer(__name__)
        self._sleep = sleep
        self._rng = rng or random.Random()

    async def run_chunk(self, batch_id: str, chunk: int, carrier: Mapping[str, str]) -> int:
        """Run the chunk's unfinished rows; returns how many got a result now.
        Raises WorkerUnavailable when the worker does not answer (the task
        retries the chunk later)."""
        with self._tracer.start_as_current_span(
            "batch.chunk",
            context=propagate.extract(dict(carrier)),
            attributes={"batch.id": batch_id, "batch.chunk": chunk, "batch.consumer": self._consumer},
        ):
            job = await self._store.load_job(batch_id)
            if job is None:
                log.warning("batch %s is gone; chunk %d has nothing to do", batch_id, chunk)
                return 0
            indexes = await self._store.unfinished(batch_id, list(job.chunk(chunk)))
            if not indexes:
                return 0
            if job.status == "in_progress" and not await self._client.reachable():
                raise WorkerUnavailable("the worker does not answer")
            rows = await self._store.rows(batch_id, indexes)
            outcomes = await asyncio.gather(*(self._run_row(job, row) for row in rows), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        for failure in failures:
            if not isinstance(failure, WorkerUnavailable):
                raise failure
        if failures:
            raise failures[0]
        return sum(1 for o in outcomes if o is True)

    async def fail_chunk(self, batch_id: str, chunk: int, reason: str) -> None:
        """The chunk could not run (its worker stayed down): its unfinished
        rows get an error result, so the job still completes."""
        job = await self._store.load_job(batch_id)
        if job is None:
            return
        for row in await self._store.rows(batch_id, await self._store.unfinished(batch_id, list(job.chunk(chunk)))):
            await self._store.record(job, row.index, row_error(row, "worker_unavailable", reason))

    def _backoff_s(self, attempt: int) -> float:
        ceiling = min(self._settings.retry_backoff_max_s, self._settings.retry_backoff_s * 2 ** (attempt - 1))
        return float(ceiling * self._rng.uniform(0.5, 1.0))

    async def _run_row(self, job: JobRecord, row: StoredRow) -> bool:
        # The row's request id (its output line says it too) on its spans and
        # logs; each row runs in a task of its own, so this stays the row's.
        request_id_var.set(row_request_id(job.id, row.line))
        with self._tracer.start_as_current_span(
            "batch.row", attributes={"batch.id": job.id, "batch.line": row.line, "batch.custom_id": row.custom_id}
        ):
            preemptible = True
            ask = self._ask(job, row)
            while True:
                result: batch_pb2.BatchResult | None = None
                error: AttemptError | None = None
                # The row holds its lease only while the worker runs it; the
                # bookkeeping after it (writing the result) gives it back first.
                async with self._leases.lease(ask) as held:
                    verdict = await self._store.begin_attempt(job, row.index, self._consumer)
                    if verdict.verdict in ("done", "skip"):
                        held.outcome = scheduler_pb2.LEASE_OUTCOME_CANCELLED
                        return False
                    if verdict.verdict == "run" and verdict.attempt <= self._settings.row_max_attempts:
                        try:
                            result = await self._attempt(job, row, preemptible=preemptible, held=held)
                        except WorkerUnavailable:
                            await self._store.undo_attempt(job, row.index)
                            raise
                        except AttemptError as failure:
                            error = failure
                if error is not None and error.code == PREEMPTED and preemptible:
                    # Made room for online work: not the row's fault. Once
                    # more, not preemptible (so never stopped twice).
                    await self._store.undo_attempt(job, row.index)
                    preemptible = False
                    log.info("batch %s line %d: preempted for online work; retrying once", job.id, row.line)
                    continue
                if verdict.verdict == "orphan":
                    return await self._record(job, row, await self._stopped_error(job, row))
                if result is not None:
                    return await self._record(job, row, result)
                if error is None:
                    # Attempts used up by consumers that stopped mid-row.
                    last = await self._store.last_failure(job, row.index) or "its consumer stopped while running it"
                    return await self._record(job, row, self._exhausted(row, last))
                reason = f"{error.code}: {error.message}"
                if not error.retryable:
                    return await self._record(job, row, row_error(row, error.code, error.message))
                if verdict.attempt >= self._settings.row_max_attempts:
                    return await self._record(job, row, self._exhausted(row, reason))
                await self._store.note_failure(job, row.index, reason)
                log.info("batch %s line %d: attempt %d failed (%s)", job.id, row.line, verdict.attempt, reason)
                await self._sleep(self._backoff_s(verdict.attempt))

    def _exhausted(self, row: StoredRow, reason: str) -> batch_pb2.BatchResult:
        attempts = self._settings.row_max_attempts
        return row_error(row, "row_failed", f"failed after {attempts} attempts; last: {reason}")

    async def _stopped_error(self, job: JobRecord, row: StoredRow) -> batch_pb2.BatchResult:
        current = await self._store.load_job(job.id)
        status = current.status if current is not None else "gone"
        if status in ("cancelling", "cancelled"):
            return row_error(row, "batch_cancelled", "the batch was cancelled before this row finished")
        if status == "expired":
            return row_error(row, "batch_expired", "the batch expired before this row finished")
        return row_error(row, "batch_stopped", f"the batch stopped ({status}) before this row finished")

    async def _record(self, job: JobRecord, row: StoredRow, result: batch_pb2.BatchResult) -> bool:
        written, status = await self._store.record(job, row.index, result)
        if written and status in ("completed", "cancelled"):
            log.info("batch %s %s", job.id, status)
        return written

    def _ask(self, job: JobRecord, row: StoredRow) -> RowAsk:
        request_id = row_request_id(job.id, row.line)
        if job.endpoint == "/v1/embeddings":
            return embed_ask(
                request_id, job.model_version, job.tenant, generation_pb2.EmbedRequest.FromString(row.request)
            )
        return generate_ask(
            request_id, job.model_version, job.tenant, generation_pb2.GenerateRequest.FromString(row.request)
        )

    async def _attempt(
        self, job: JobRecord, row: StoredRow, *, preemptible: bool, held: HeldLease
    ) -> batch_pb2.BatchResult:
        request_id = row_request_id(job.id, row.line)
        timeout_s = self._settings.row_timeout_s
        result = batch_pb2.BatchResult(custom_id=row.custom_id, line=row.line)
        if job.endpoint == "/v1/embeddings":
            embedded = await self._client.embed(
                generation_pb2.EmbedRequest.FromString(row.request),
                request_id=request_id,
                tenant=job.tenant,
                timeout_s=timeout_s,
            )
            result.embedding.CopyFrom(embedded)
        else:
            answer = await self._client.generate(
                generation_pb2.GenerateRequest.FromString(row.request),
                model_version=job.model_version,
                request_id=request_id,
                tenant=job.tenant,
                timeout_s=timeout_s,
                preemptible=preemptible,
            )
            result.response.CopyFrom(answer)
        held.outcome = scheduler_pb2.LEASE_OUTCOME_OK
        result.finished_at = int(time.time())
        return result
