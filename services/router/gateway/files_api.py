"""/v1/files, as the official `openai` client calls it: upload a batch
input (multipart: file, purpose="batch"), describe, download, delete. Output
and error files of batch jobs are downloaded here too.

Like every gateway route, these raise Headrace errors and leave the rest
to the gateway: the middleware authenticates (the tenant reaches the
scheduler through the forwarder's metadata), errors.py writes the error."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from headrace.v1 import batch_pb2
from services.router.batch_forwarding import BatchForwarder
from services.router.gateway.uploads import read_upload


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


def build_files_router(forwarder: BatchForwarder, *, max_file_bytes: int) -> APIRouter:
    router = APIRouter(tags=["files"])

    @router.post("/v1/files")
    async def create_file(request: Request) -> Response:
        upload = await read_upload(request, max_file_bytes=max_file_bytes)
        info = await forwarder.upload_file(
            batch_pb2.UploadFileRequest(filename=upload.filename, purpose=upload.purpose, content=upload.content)
        )
        return JSONResponse(file_object(info))

    @router.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str) -> Response:
        return JSONResponse(file_object(await forwarder.get_file(batch_pb2.GetFileRequest(file_id=file_id))))

    @router.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        content = await forwarder.file_content(batch_pb2.GetFileContentRequest(file_id=file_id))
        return Response(content.content, media_type="application/jsonl")

    @router.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> Response:
        deleted = await forwarder.delete_file(batch_pb2.DeleteFileRequest(file_id=file_id))
        return JSONResponse({"id": deleted.file_id, "object": "file", "deleted": deleted.deleted})

    return router
