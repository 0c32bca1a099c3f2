"""Batch jobs and files belong to the scheduler; the router forwards them.
One forwarder serves both doors: the gRPC `Router` RPCs (server.py) and
the HTTP gateway's /v1/batches and /v1/files (gateway/batches_api.py,
gateway/files_api.py).

Each call is made on behalf of the request being served: its tenant,
request id, trace and deadline travel in the metadata
(headrace/runtime/channels.py), so the scheduler scopes every job and
file to the tenant that the door authenticated. A failed call comes back
as the Headrace error it was (same status, same message)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from headrace.runtime.channels import call_options
from headrace.runtime.errors import from_rpc_error, rpc_stream
from headrace.v1 import batch_pb2, scheduler_pb2_grpc


class BatchForwarder:
    def __init__(self, scheduler: scheduler_pb2_grpc.SchedulerStub, *, timeout_s: float = 30.0) -> None:
        self._scheduler = scheduler
        # Unary calls only: a results stream lasts as long as the request's deadline.
        self._timeout_s = timeout_s

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, **call_options(timeout=self._timeout_s))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    async def upload_file(self, request: batch_pb2.UploadFileRequest) -> batch_pb2.FileInfo:
        info: batch_pb2.FileInfo = await self._call(self._scheduler.UploadFile, request)
        return info

    async def get_file(self, request: batch_pb2.GetFileRequest) -> batch_pb2.FileInfo:
        info: batch_pb2.FileInfo = await self._call(self._scheduler.GetFile, request)
        return info

    async def file_content(self, request: batch_pb2.GetFileContentRequest) -> batch_pb2.FileContent:
        content: batch_pb2.FileContent = await self._call(self._scheduler.GetFileContent, request)
        return content

    async def delete_file(self, request: batch_pb2.DeleteFileRequest) -> batch_pb2.DeleteFileResponse:
        deleted: batch_pb2.DeleteFileResponse = await self._call(self._scheduler.DeleteFile, request)
        return deleted

    async def submit(self, request: batch_pb2.SubmitBatchRequest) -> batch_pb2.BatchJob:
        job: batch_pb2.BatchJob = await self._call(self._scheduler.SubmitBatch, request)
        return job

    async def get(self, request: batch_pb2.GetBatchRequest) -> batch_pb2.BatchJob:
        job: batch_pb2.BatchJob = await self._call(self._scheduler.GetBatch, request)
        return job

    async def cancel(self, request: batch_pb2.CancelBatchRequest) -> batch_pb2.BatchJob:
        job: batch_pb2.BatchJob = await self._call(self._scheduler.CancelBatch, request)
        return job

    async def list(self, request: batch_pb2.ListBatchesRequest) -> batch_pb2.ListBatchesResponse:
        page: batch_pb2.ListBatchesResponse = await self._call(self._scheduler.ListBatches, request)
        return page

    def stream_results(self, request: batch_pb2.StreamBatchResultsRequest) -> AsyncIterator[batch_pb2.BatchResult]:
        return rpc_stream(self._scheduler.StreamBatchResults(request, **call_options()))
