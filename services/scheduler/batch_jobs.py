"""Batch jobs, the scheduler's side: accept a job (checked, bounded,
stored, split into chunk tasks on its pool's queue), and answer for it:
progress, cancel, results as they come, and the output and error files.
Knows nothing of gRPC; every call is made for one tenant, who sees only
its own jobs and files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from opentelemetry import propagate, trace

from headrace.batch.input_rows import ENDPOINT_TASKS, BatchRow, ParsedInput, parse_input
from headrace.batch.model_choice import resolve_batch_model
from headrace.batch.output_lines import is_error, jsonl, result_line
from headrace.batch.queue import ChunkPublisher
from headrace.batch.store import (
    ERROR,
    INPUT,
    OUTPUT,
    BatchStore,
    FileRecord,
    JobRecord,
    encode_row,
    new_batch_id,
    new_file_id,
)
from headrace.runtime.config import Settings
from headrace.runtime.errors import InvalidArgument, NotFound, PayloadTooLarge, QueueFull, Unavailable
from headrace.v1 import batch_pb2

log = logging.getLogger(__name__)

COMPLETION_WINDOWS = {"24h": 24 * 3600}
MAX_METADATA_ENTRIES = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
# Room left in a gRPC message for everything but a file's bytes.
_MESSAGE_OVERHEAD = 64 * 1024
# Results sent per read of the results stream.
_RESULTS_PAGE = 256


@dataclass(frozen=True)
class SubmitSpec:
    input_jsonl: bytes = b""
    input_file_id: str = ""
    endpoint: str = ""
    completion_window: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


class BatchJobs:
    def __init__(
        self,
        *,
        settings: Settings,
        store: BatchStore,
        publisher: ChunkPublisher,
        tracer: trace.Tracer | None = None,
        expiry_sweep_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        choose_pool: Callable[[str], str | None] | None = None,
    ) -> None:
        self._settings = settings
        # Model version -> the pool its jobs run on (of several serving it,
        # the cheapest: Dispatcher.batch_pool); None: the version's own pool.
        self._choose_pool = choose_pool
        self._batch = settings.batch
        self._store = store
        self._publisher = publisher
        self._tracer = tracer or trace.get_tracer(__name__)
        self._expiry_sweep_s = expiry_sweep_s
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="batch-expiry-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._expiry_sweep_s)
            try:
                for batch_id in await self._store.expire_due():
                    log.warning("batch %s reached the end of its completion window", batch_id)
            except Exception:
                log.exception("batch expiry sweep failed; trying again later")

    def _now(self) -> int:
        return int(self._clock())

    # -- files

    async def upload_file(self, tenant: str, *, filename: str, purpose: str, content: bytes) -> FileRecord:
        if purpose != "batch":
            raise InvalidArgument(f"purpose: {purpose!r}; only 'batch' files can be uploaded here")
        if not filename or len(filename) > 255:
            raise InvalidArgument("filename: required, at most 255 characters")
        self._check_size(len(content))
        record = FileRecord(
            id=new_file_id(),
            tenant=tenant,
            filename=filename,
            purpose="batch",
            bytes=len(content),
            created_at=self._now(),
            kind=INPUT,
        )
        await self._store.put_file(record, content)
        return record

    def _check_size(self, size: int) -> None:
        if size > self._batch.max_file_bytes:
            raise PayloadTooLarge(f"file: {size} bytes is over the limit of {self._batch.max_file_bytes}")

    async def get_file(self, tenant: str, file_id: str) -> FileRecord:
        record = await self._store.get_file(tenant, file_id)
        if record.kind != INPUT:
            content = await self._result_file(record)
            record.bytes = len(content)
        return record

    async def file_content(self, tenant: str, file_id: str) -> tuple[FileRecord, bytes]:
        record = await self._store.get_file(tenant, file_id)
        content = await self._store.input_content(record) if record.kind == INPUT else await self._result_file(record)
        record.bytes = len(content)
        limit = self._settings.limits.max_message_bytes - _MESSAGE_OVERHEAD
        if len(content) > limit:
            raise PayloadTooLarge(
                f"file {file_id}: {len(content)} bytes is more than one message carries ({limit}); "
                "read the results with StreamBatchResults instead"
            )
        return record, content

    async def delete_file(self, tenant: str, file_id: str) -> None:
        await self._store.delete_file(tenant, file_id)

    async def _result_file(self, record: FileRecord) -> bytes:
        """A job's output or error file, in OpenAI's format, from its
        results so far (in input order)."""
        job = await self._store.load_job(record.batch_id)
        if job is None:
            raise NotFound(f"file {record.id!r} not found (its batch is gone)")
        results = await self._store.results(job.id)
        wanted_errors = record.kind == ERROR
        lines = [
            result_line(results[index], batch_id=job.id, endpoint=job.endpoint)
            for index in sorted(results)
            if is_error(results[index]) == wanted_errors
        ]
        if wanted_errors and job.status == "expired":
            # OpenAI's way: rows that never ran are errors of their own.
            for row in await self._store.all_rows(job.id):
                if row.index not in results:
                    expired = batch_pb2.BatchResult(
                        custom_id=row.custom_id,
                        line=row.line,
                        error=batch_pb2.BatchRowError(
                            code="batch_expired", message="the batch expired before this row ran"
                        ),
                        finished_at=job.expired_at,
                    )
                    lines.append(result_line(expired, batch_id=job.id, endpoint=job.endpoint))
        return jsonl(lines)

    # -- jobs

    async def submit(self, tenant: str, spec: SubmitSpec) -> JobRecord:
        endpoint, window_s = self._check_spec(spec)
        input_file_id, data = await self._input(tenant, spec)
        parsed = parse_input(
            data,
            endpoint=endpoint,
            limits=self._settings.limits,
            max_rows=self._batch.max_rows_per_batch,
            resolve_model=lambda name, row_task: resolve_batch_model(self._settings, name, task=row_task),
        )
        now = self._now()
        job = JobRecord(
            id=new_batch_id(),
            tenant=tenant,
            status="in_progress",
            endpoint=endpoint,
            model_version=parsed.model.model_version if parsed.model else "",
            pool=self._job_pool(parsed),
            input_file_id=input_file_id,
            output_file_id=new_file_id(),
            error_file_id=new_file_id(),
            total=len(parsed.rows),
            chunk_rows=self._batch.chunk_rows,
            completion_window=spec.completion_window or "24h",
            created_at=now,
            expires_at=now + window_s,
            metadata=dict(spec.metadata),
            in_progress_at=now,
        )
        if parsed.errors or parsed.model is None:
            return await self._failed_validation(job, parsed)
        if not await self._store.reserve(job.pool, job.total, self._batch.max_pending_rows_per_pool):
            pending = await self._store.pending(job.pool)
            raise QueueFull(
                f"the batch queue of pool {job.pool!r} is full: {pending} rows waiting, limit "
                f"{self._batch.max_pending_rows_per_pool}; this job has {job.total}. Retry later",
                retry_after_s=self._batch.queue_full_retry_after_s,
            )
        try:
            await self._store.create_job(job, [self._encode(row) for row in parsed.rows], self._result_files(job))
        except BaseException:
            await self._store.release(job.pool, job.total)
            raise
        with self._tracer.start_as_current_span(
            "batch.enqueue", attributes={"batch.id": job.id, "batch.pool": job.pool, "batch.chunks": job.chunks}
        ):
            headers: dict[str, str] = {}
            propagate.inject(headers)
            try:
                await self._publisher.publish(pool=job.pool, batch_id=job.id, chunks=job.chunks, headers=headers)
            except Exception as exc:
                log.exception("could not enqueue batch %s", job.id)
                await self._store.fail(job, [{"code": "enqueue_failed", "message": f"the queue refused it: {exc}"}])
                raise Unavailable(f"the batch queue is unavailable ({exc}); retry later", retry_after_s=5.0) from exc
        log.info("batch %s: %d rows in %d chunks on pool %s", job.id, job.total, job.chunks, job.pool)
        return job

    def _job_pool(self, parsed: ParsedInput) -> str:
        if parsed.model is None:
            return ""
        chosen = self._choose_pool(parsed.model.model_version) if self._choose_pool is not None else None
        return chosen or parsed.model.pool

    def _check_spec(self, spec: SubmitSpec) -> tuple[str, int]:
        if bool(spec.input_jsonl) == bool(spec.input_file_id):
            raise InvalidArgument("input_jsonl / input_file_id: set exactly one of them")
        endpoint = spec.endpoint or "/v1/chat/completions"
        if endpoint not in ENDPOINT_TASKS:
            raise InvalidArgument(f"endpoint: {endpoint!r} is not one of {', '.join(sorted(ENDPOINT_TASKS))}")
        window = spec.completion_window or "24h"
        if window not in COMPLETION_WINDOWS:
            raise InvalidArgument(f"completion_window: {window!r}; only '24h' is supported")
        if len(spec.metadata) > MAX_METADATA_ENTRIES:
            raise InvalidArgument(f"metadata: {len(spec.metadata)} entries is over the limit of {MAX_METADATA_ENTRIES}")
        for key, value in spec.metadata.items():
            if not key or len(key) > MAX_METADATA_KEY_CHARS:
                raise InvalidArgument(f"metadata: key {key[:80]!r} must be 1 to {MAX_METADATA_KEY_CHARS} characters")
            if len(value) > MAX_METADATA_VALUE_CHARS:
                raise InvalidArgument(f"metadata[{key!r}]: longer than {MAX_METADATA_VALUE_CHARS} characters")
        return endpoint, COMPLETION_WINDOWS[window]

    async def _input(self, tenant: str, spec: SubmitSpec) -> tuple[str, bytes]:
        if spec.input_file_id:
            record = await self._store.get_file(tenant, spec.input_file_id)
            if record.kind != INPUT or record.purpose != "batch":
                raise InvalidArgument(
                    f"input_file_id: {spec.input_file_id} is not a file uploaded with purpose 'batch'"
                )
            return record.id, await self._store.input_content(record)
        self._check_size(len(spec.input_jsonl))
        record = FileRecord(
            id=new_file_id(),
            tenant=tenant,
            filename="input.jsonl",
            purpose="batch",
            bytes=len(spec.input_jsonl),
            created_at=self._now(),
            kind=INPUT,
        )
        # Sent inline, so nobody will delete it: it lives as long as its job can.
        await self._store.put_file(
            record, spec.input_jsonl, ttl_s=max(COMPLETION_WINDOWS.values()) + self._batch.retention_s
        )
        return record.id, spec.input_jsonl

    @staticmethod
    def _encode(row: BatchRow) -> bytes:
        return encode_row(row.line, row.custom_id, row.request.SerializeToString())

    def _result_files(self, job: JobRecord) -> list[FileRecord]:
        return [
            FileRecord(
                id=file_id,
                tenant=job.tenant,
                filename=f"{job.id}_{kind}.jsonl",
                purpose="batch_output",
                bytes=0,
                created_at=job.created_at,
                kind=kind,
                batch_id=job.id,
            )
            for file_id, kind in ((job.output_file_id, OUTPUT), (job.error_file_id, ERROR))
        ]

    async def _failed_validation(self, job: JobRecord, parsed: ParsedInput) -> JobRecord:
        job.status = "failed"
        job.failed_at = job.in_progress_at
        job.in_progress_at = 0
        job.total = 0
        job.errors = [{"code": e.code, "message": e.message, "line": e.line, "param": e.param} for e in parsed.errors]
        await self._store.create_job(job, [], [])
        log.info("batch %s failed validation: %d bad lines", job.id, len(parsed.errors))
        return await self._store.get_job(job.tenant, job.id)

    async def get(self, tenant: str, batch_id: str) -> JobRecord:
        return await self._store.get_job(tenant, batch_id)

    async def cancel(self, tenant: str, batch_id: str) -> JobRecord:
        job = await self._store.cancel(tenant, batch_id)
        log.info("batch %s: cancel asked, now %s", batch_id, job.status)
        return job

    async def list(self, tenant: str, *, limit: int, after: str) -> tuple[list[JobRecord], bool]:
        if limit == 0:
            limit = 20
        if not 1 <= limit <= 100:
            raise InvalidArgument(f"limit: {limit} is outside [1, 100]")
        return await self._store.list_jobs(tenant, limit=limit, after=after)

    async def results(
        self, tenant: str, batch_id: str, *, follow: bool, poll_ms: int = 1000
    ) -> AsyncIterator[batch_pb2.BatchResult]:
        """Results in the order rows finished; with follow, until the job ends."""
        await self._store.get_job(tenant, batch_id)
        last = "0"
        while True:
            # While results come, read only them (the job's record is read
            # once they run out, not once per page: that was a third of the
            # Redis work of following a running job).
            events = await self._store.result_events(batch_id, after=last, count=_RESULTS_PAGE, block_ms=None)
            if not events:
                # Read the status before the results: a job's last result
                # and its end are written together, so once it has ended,
                # one more read sees everything.
                job = await self._store.load_job(batch_id)
                ended = job is None or job.terminal
                events = await self._store.result_events(batch_id, after=last, count=_RESULTS_PAGE, block_ms=None)
            if not events:
                if ended or not follow:
                    return
                events = await self._store.result_events(batch_id, after=last, count=_RESULTS_PAGE, block_ms=poll_ms)
            for event_id, result in events:
                last = event_id
                yield result
