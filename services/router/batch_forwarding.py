"""The router's side of batch jobs and files for the HTTP gateway: each
call goes to the scheduler (which owns jobs and files) on behalf of one
tenant, and a failed call comes back as the Headrace error it was."""

from __future__ import annotations

from typing import Any

import grpc.aio

from headrace.runtime.channels import call_options
from headrace.runtime.errors import from_rpc_error
from headrace.runtime.request_context import TENANT_KEY
from headrace.v1 import batch_pb2, scheduler_pb2_grpc


class BatchForwarder:
    def __init__(self, scheduler: scheduler_pb2_grpc.SchedulerStub, *, timeout_s: float = 30.0) -> None:
        self._scheduler = scheduler
        self._timeout_s = timeout_s

    async def _call(self, method: Any, request: Any, tenant: str) -> Any:
        try:
            return await method(request, **call_options(timeout=self._timeout_s, metadata=[(TENANT_KEY, tenant)]))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    async def upload_file(self, tenant: str, *, filename: str, purpose: str, content: bytes) -> batch_pb2.FileInfo:
        request = batch_pb2.UploadFileRequest(filename=filename, purpose=purpose, content=content)
        info: batch_pb2.FileInfo = await self._call(self._scheduler.UploadFile, request, tenant)
        return info

    async def get_file(self, tenant: str, file_id: str) -> batch_pb2.FileInfo:
        info: batch_pb2.FileInfo = await self._call(
            self._scheduler.GetFile, batch_pb2.GetFileRequest(file_id=file_id), tenant
        )
        return info

    async def file_content(self, tenant: str, file_id: str) -> batch_pb2.FileContent:
        content: batch_pb2.FileContent = await self._call(
            self._scheduler.GetFileContent, batch_pb2.GetFileContentRequest(file_id=file_id), tenant
        )
        return content

    async def delete_file(self, tenant: str, file_id: str) -> batch_pb2.DeleteFileResponse:
        deleted: batch_pb2.DeleteFileResponse = await self._call(
            self._scheduler.DeleteFile, batch_pb2.DeleteFileRequest(file_id=file_id), tenant
        )
        return deleted

    async def submit(self, tenant: str, request: batch_pb2.SubmitBatchRequest) -> batch_pb2.BatchJob:
        job: batch_pb2.BatchJob = await self._call(self._scheduler.SubmitBatch, request, tenant)
        return job

    async def get(self, tenant: str, batch_id: str) -> batch_pb2.BatchJob:
        job: batch_pb2.BatchJob = await self._call(
            self._scheduler.GetBatch, batch_pb2.GetBatchRequest(batch_id=batch_id), tenant
        )
        return job

    async def cancel(self, tenant: str, batch_id: str) -> batch_pb2.BatchJob:
        job: batch_pb2.BatchJob = await self._call(
            self._scheduler.CancelBatch, batch_pb2.CancelBatchRequest(batch_id=batch_id), tenant
        )
        return job

    async def list(self, tenant: str, *, limit: int, after: str) -> batch_pb2.ListBatchesResponse:
        page: batch_pb2.ListBatchesResponse = await self._call(
            self._scheduler.ListBatches, batch_pb2.ListBatchesRequest(limit=limit, after=after), tenant
        )
        return page
