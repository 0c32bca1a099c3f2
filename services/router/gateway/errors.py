"""The one place where errors become HTTP answers: OpenAI's error JSON

    {"error": {"message": ..., "type": ..., "param": null, "code": ...}}

with the status of headrace/runtime/errors.py's table (and Retry-After
where the error carries one). Streams, once started, send the same body as
a final event (streaming.py)."""

from __future__ import annotations

import logging
import re

import grpc.aio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from headrace.runtime.errors import (
    HeadraceError,
    Internal,
    InvalidArgument,
    from_rpc_error,
    mapping_for,
    trailing_metadata_for,
)
from headrace.runtime.request_context import current_request_id
from services.router.gateway import metrics
from services.router.gateway.protocol import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")

# Statuses that reach the gateway without a Headrace error (routing, methods).
_HTTP_TYPES = {404: "not_found_error", 405: "invalid_request_error"}


def error_detail(error: HeadraceError) -> ErrorDetail:
    # The class name as a code (rate_limited, queue_full, no_worker_available):
    # finer than the type, for programs that branch on it.
    return ErrorDetail(
        message=error.message, type=mapping_for(error).openai_type, code=_CAMEL.sub("_", type(error).__name__).lower()
    )


def error_response(error: HeadraceError) -> Response:
    mapping = mapping_for(error)
    # Retry-After in whole seconds, as the gRPC trailer has it.
    headers = dict(trailing_metadata_for(error))
    metrics.ERRORS.labels(type=type(error).__name__).inc()
    return Response(
        ErrorBody(error=error_detail(error)).model_dump_json(),
        status_code=mapping.http_status,
        headers=headers,
        media_type="application/json",
    )


def as_headrace_error(exc: BaseException) -> HeadraceError | None:
    """The Headrace error an exception stands for: itself, or a failed call
    to another service keeping its status (as the gRPC interceptor does)."""
    if isinstance(exc, HeadraceError):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError):
        return from_rpc_error(exc)
    return None


def internal_error() -> Internal:
    return Internal(f"internal error (request id {current_request_id()}); see the router's log")


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    return f"{'.'.join(str(part) for part in first.get('loc', ()))}: {first.get('msg', 'invalid')}"


def install_error_handlers(app: FastAPI) -> None:
    async def on_headrace_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HeadraceError)
        return error_response(exc)

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = ErrorDetail(
            message=f"{request.method} {request.url.path}: {exc.detail}",
            type=_HTTP_TYPES.get(exc.status_code, "invalid_request_error"),
        )
        return Response(
            ErrorBody(error=detail).model_dump_json(),
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
            media_type="application/json",
        )

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(InvalidArgument(_validation_message(exc)))

    async def on_failed_call(request: Request, exc: Exception) -> Response:
        error = as_headrace_error(exc)
        assert error is not None
        return error_response(error)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error serving %s", request.url.path, exc_info=exc)
        return error_response(internal_error())

    app.add_exception_handler(HeadraceError, on_headrace_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(grpc.aio.AioRpcError, on_failed_call)
    app.add_exception_handler(Exception, on_unexpected)
