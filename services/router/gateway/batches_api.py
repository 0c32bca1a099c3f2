"""/v1/batches, as the official `openai` client calls it: create (from an
uploaded file), retrieve, cancel, list. Jobs run through the queue; their
results come as output and error files (see files_api)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from headrace.runtime.errors import InvalidArgument
from headrace.v1 import batch_pb2
from services.router.batch_forwarding import BatchForwarder
from services.router.gateway.batch_common import TenantOf, answer, required_text


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


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidArgument("body: must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidArgument("body: must be a JSON object")
    return body


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidArgument("metadata: must be an object of strings")
    return metadata


def build_batches_router(forwarder: BatchForwarder, tenant_of: TenantOf) -> APIRouter:
    router = APIRouter(tags=["batches"])

    @router.post("/v1/batches")
    async def create_batch(request: Request) -> Response:
        async def handle(tenant: str) -> Response:
            body = await _json_body(request)
            window = body.get("completion_window", "24h")
            if not isinstance(window, str):
                raise InvalidArgument("completion_window: must be a string")
            job = await forwarder.submit(
                tenant,
                batch_pb2.SubmitBatchRequest(
                    input_file_id=required_text(body, "input_file_id"),
                    endpoint=required_text(body, "endpoint"),
                    completion_window=window,
                    metadata=_metadata(body),
                ),
            )
            return JSONResponse(batch_object(job))

        return await answer(request, tenant_of, handle)

    @router.get("/v1/batches/{batch_id}")
    async def retrieve_batch(request: Request, batch_id: str) -> Response:
        async def handle(tenant: str) -> Response:
            return JSONResponse(batch_object(await forwarder.get(tenant, batch_id)))

        return await answer(request, tenant_of, handle)

    @router.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(request: Request, batch_id: str) -> Response:
        async def handle(tenant: str) -> Response:
            return JSONResponse(batch_object(await forwarder.cancel(tenant, batch_id)))

        return await answer(request, tenant_of, handle)

    @router.get("/v1/batches")
    async def list_batches(request: Request, limit: int = 20, after: str = "") -> Response:
        async def handle(tenant: str) -> Response:
            if not 1 <= limit <= 100:
                raise InvalidArgument(f"limit: {limit} is outside [1, 100]")
            page = await forwarder.list(tenant, limit=limit, after=after)
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

        return await answer(request, tenant_of, handle)

    return router
