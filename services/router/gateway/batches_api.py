"""/v1/batches, as the official `openai` client calls it: create (from an
uploaded file), retrieve, cancel, list. Jobs run through the queue; their
results come as output and error files (see files_api). The body is read
bounded (gateway.max_body_bytes) and strict, as for every other route;
errors are raised and written by errors.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from headrace.runtime.errors import InvalidArgument
from headrace.v1 import batch_pb2
from services.router.batch_forwarding import BatchForwarder
from services.router.gateway.body import read_model


def _or_none(value: Any) -> Any:
    return value or None


def batch_object(job: batch_pb2.BatchJob) -> dict[str, Any]:
    """OpenAI's Batch object (0 and "" become null, as OpenAI sends them)."""
    errors = [
        {"code": e.code, "message": e.message, "line": _or_none(e.line), "param": _or_none(e.param)} for e in job.errors
    ]
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": job.endpoint,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": job.input_file_id,
        "completion_window": job.completion_window,
        "status": batch_pb2.BatchStatus.Name(job.status).removeprefix("BATCH_STATUS_").lower(),
        "output_file_id": _or_none(job.output_file_id),
        "error_file_id": _or_none(job.error_file_id),
        "created_at": job.created_at,
        "in_progress_at": _or_none(job.in_progress_at),
        "expires_at": _or_none(job.expires_at),
        "finalizing_at": _or_none(job.finalizing_at),
        "completed_at": _or_none(job.completed_at),
        "failed_at": _or_none(job.failed_at),
        "expired_at": None,
        "cancelling_at": _or_none(job.cancelling_at),
        "cancelled_at": _or_none(job.cancelled_at),
        "request_counts": {
            "total": job.request_counts.total,
            "completed": job.request_counts.completed,
            "failed": job.request_counts.failed,
        },
        "metadata": dict(job.metadata) or None,
    }


class BatchCreateRequest(BaseModel):
    """POST /v1/batches's body (strict, as the gateway's other requests)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1)
    endpoint: str = Field(min_length=1)
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


def build_batches_router(forwarder: BatchForwarder, *, max_body_bytes: int) -> APIRouter:
    router = APIRouter(tags=["batches"])

    @router.post("/v1/batches")
    async def create_batch(request: Request) -> Response:
        body = await read_model(request, BatchCreateRequest, max_bytes=max_body_bytes)
        job = await forwarder.submit(
            batch_pb2.SubmitBatchRequest(
                input_file_id=body.input_file_id,
                endpoint=body.endpoint,
                completion_window=body.completion_window,
                metadata=body.metadata or {},
            )
        )
        return JSONResponse(batch_object(job))

    @router.get("/v1/batches/{batch_id}")
    async def retrieve_batch(batch_id: str) -> Response:
        return JSONResponse(batch_object(await forwarder.get(batch_pb2.GetBatchRequest(batch_id=batch_id))))

    @router.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> Response:
        return JSONResponse(batch_object(await forwarder.cancel(batch_pb2.CancelBatchRequest(batch_id=batch_id))))

    @router.get("/v1/batches")
    async def list_batches(limit: int = 20, after: str = "") -> Response:
        if not 1 <= limit <= 100:
            raise InvalidArgument(f"limit: {limit} is outside [1, 100]")
        page = await forwarder.list(batch_pb2.ListBatchesRequest(limit=limit, after=after))
        data = [batch_object(job) for job in page.batches]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": page.has_more,
            }
        )

    return router
