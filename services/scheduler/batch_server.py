"""The Scheduler's batch and file RPCs: translate protos, take the tenant
the router passed on, and delegate to BatchJobs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from headrace.batch.store import STORE_DOWN_ERRORS, FileRecord, JobRecord, store_unavailable
from headrace.runtime.request_context import current_tenant
from headrace.v1 import batch_pb2
from services.scheduler.batch_jobs import BatchJobs, SubmitSpec

_STATUSES = {
    "validating": batch_pb2.BATCH_STATUS_VALIDATING,
    "in_progress": batch_pb2.BATCH_STATUS_IN_PROGRESS,
    "finalizing": batch_pb2.BATCH_STATUS_FINALIZING,
    "completed": batch_pb2.BATCH_STATUS_COMPLETED,
    "failed": batch_pb2.BATCH_STATUS_FAILED,
    "cancelling": batch_pb2.BATCH_STATUS_CANCELLING,
    "cancelled": batch_pb2.BATCH_STATUS_CANCELLED,
    "expired": batch_pb2.BATCH_STATUS_EXPIRED,
}


def job_to_proto(job: JobRecord) -> batch_pb2.BatchJob:
    message = batch_pb2.BatchJob(
        id=job.id,
        status=_STATUSES[job.status],
        endpoint=job.endpoint,
        input_file_id=job.input_file_id,
        request_counts=batch_pb2.BatchRequestCounts(total=job.total, completed=job.completed, failed=job.failed),
        completion_window=job.completion_window,
        metadata=job.metadata,
        errors=[
            batch_pb2.BatchError(
                code=str(e.get("code", "")),
                message=str(e.get("message", "")),
                line=int(e.get("line", 0)),
                param=str(e.get("param", "")),
            )
            for e in job.errors
        ],
        created_at=job.created_at,
        in_progress_at=job.in_progress_at,
        finalizing_at=job.finalizing_at,
        completed_at=job.completed_at,
        failed_at=job.failed_at,
        cancelling_at=job.cancelling_at,
        cancelled_at=job.cancelled_at,
        expires_at=job.expires_at,
    )
    if job.terminal:
        # Like OpenAI: the files are named once the job has ended, and only
        # when they have rows (expired rows that never ran are errors too).
        if job.completed:
            message.output_file_id = job.output_file_id
        if job.failed or (job.status == "expired" and job.completed + job.failed < job.total):
            message.error_file_id = job.error_file_id
    return message


def file_to_proto(record: FileRecord) -> batch_pb2.FileInfo:
    return batch_pb2.FileInfo(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
    )


class BatchRpcs:
    """The batch half of the Scheduler servicer (SchedulerServicer forwards
    these RPCs here)."""

    def __init__(self, jobs: BatchJobs, *, store_retry_after_s: float = 5.0) -> None:
        self._jobs = jobs
        self._store_retry_after_s = store_retry_after_s

    @contextlib.contextmanager
    def _store_answers(self) -> Iterator[None]:
        """Redis down or frozen: UNAVAILABLE with retry-after (HTTP 503),
        at once, rather than INTERNAL or a wait until the caller gives up."""
        try:
            yield
        except STORE_DOWN_ERRORS as exc:
            raise store_unavailable(exc, retry_after_s=self._store_retry_after_s) from exc

    async def SubmitBatch(self, request: batch_pb2.SubmitBatchRequest) -> batch_pb2.BatchJob:
        with self._store_answers():
            spec = SubmitSpec(
                input_jsonl=request.input_jsonl,
                input_file_id=request.input_file_id,
                endpoint=request.endpoint,
                completion_window=request.completion_window,
                metadata=dict(request.metadata),
            )
            return job_to_proto(await self._jobs.submit(current_tenant(), spec))

    async def GetBatch(self, request: batch_pb2.GetBatchRequest) -> batch_pb2.BatchJob:
        with self._store_answers():
            return job_to_proto(await self._jobs.get(current_tenant(), request.batch_id))

    async def CancelBatch(self, request: batch_pb2.CancelBatchRequest) -> batch_pb2.BatchJob:
        with self._store_answers():
            return job_to_proto(await self._jobs.cancel(current_tenant(), request.batch_id))

    async def ListBatches(self, request: batch_pb2.ListBatchesRequest) -> batch_pb2.ListBatchesResponse:
        with self._store_answers():
            jobs, has_more = await self._jobs.list(current_tenant(), limit=request.limit, after=request.after)
            return batch_pb2.ListBatchesResponse(batches=[job_to_proto(job) for job in jobs], has_more=has_more)

    async def StreamBatchResults(
        self, request: batch_pb2.StreamBatchResultsRequest
    ) -> AsyncIterator[batch_pb2.BatchResult]:
        with self._store_answers():
            async for result in self._jobs.results(current_tenant(), request.batch_id, follow=request.follow):
                yield result

    async def UploadFile(self, request: batch_pb2.UploadFileRequest) -> batch_pb2.FileInfo:
        with self._store_answers():
            record = await self._jobs.upload_file(
                current_tenant(), filename=request.filename, purpose=request.purpose, content=request.content
            )
            return file_to_proto(record)

    async def GetFile(self, request: batch_pb2.GetFileRequest) -> batch_pb2.FileInfo:
        with self._store_answers():
            return file_to_proto(await self._jobs.get_file(current_tenant(), request.file_id))

    async def GetFileContent(self, request: batch_pb2.GetFileContentRequest) -> batch_pb2.FileContent:
        with self._store_answers():
            record, content = await self._jobs.file_content(current_tenant(), request.file_id)
            return batch_pb2.FileContent(info=file_to_proto(record), content=content)

    async def DeleteFile(self, request: batch_pb2.DeleteFileRequest) -> batch_pb2.DeleteFileResponse:
        with self._store_answers():
            await self._jobs.delete_file(current_tenant(), request.file_id)
            return batch_pb2.DeleteFileResponse(file_id=request.file_id, deleted=True)
