"""/v1/files, as the official `openai` client calls it: upload a batch
input (multipart: file, purpose="batch"), describe, download, delete. Output
and error files of batch jobs are downloaded here too."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from headrace.runtime.errors import InvalidArgument, PayloadTooLarge
from headrace.v1 import batch_pb2
from services.router.batch_forwarding import BatchForwarder
from services.router.gateway.batch_common import TenantOf, answer


def file_object(info: batch_pb2.FileInfo) -> dict[str, Any]:
    """OpenAI's File object."""
    return {
        "id": info.id,
        "object": "file",
        "bytes": info.bytes,
        "created_at": info.created_at,
        "filename": info.filename,
        "purpose": info.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def build_files_router(forwarder: BatchForwarder, tenant_of: TenantOf, *, max_file_bytes: int) -> APIRouter:
    router = APIRouter(tags=["files"])

    @router.post("/v1/files")
    async def create_file(request: Request, file: UploadFile | None = File(None), purpose: str = Form("")) -> Response:
        async def handle(tenant: str) -> Response:
            if file is None:
                raise InvalidArgument("file: required (multipart/form-data)")
            if not purpose:
                raise InvalidArgument("purpose: required; 'batch' for batch input files")
            # Read at most one byte past the bound: never more into memory.
            content = await file.read(max_file_bytes + 1)
            if len(content) > max_file_bytes:
                raise PayloadTooLarge(f"file: over the limit of {max_file_bytes} bytes")
            info = await forwarder.upload_file(
                tenant, filename=file.filename or "upload.jsonl", purpose=purpose, content=content
            )
            return JSONResponse(file_object(info))

        return await answer(request, tenant_of, handle)

    @router.get("/v1/files/{file_id}")
    async def retrieve_file(request: Request, file_id: str) -> Response:
        async def handle(tenant: str) -> Response:
            return JSONResponse(file_object(await forwarder.get_file(tenant, file_id)))

        return await answer(request, tenant_of, handle)

    @router.get("/v1/files/{file_id}/content")
    async def file_content(request: Request, file_id: str) -> Response:
        async def handle(tenant: str) -> Response:
            content = await forwarder.file_content(tenant, file_id)
            return Response(content.content, media_type="application/jsonl")

        return await answer(request, tenant_of, handle)

    @router.delete("/v1/files/{file_id}")
    async def delete_file(request: Request, file_id: str) -> Response:
        async def handle(tenant: str) -> Response:
            deleted = await forwarder.delete_file(tenant, file_id)
            return JSONResponse({"id": deleted.file_id, "object": "file", "deleted": deleted.deleted})

        return await answer(request, tenant_of, handle)

    return router
