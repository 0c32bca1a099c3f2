"""Server interceptors every service shares: request context (id, tenant,
deadline), authentication, and the one place where exceptions become gRPC
statuses. Tracing comes from opentelemetry-instrumentation-grpc.

Each interceptor wraps the method's behavior rather than acting in
intercept_service, so what it sets lives in the RPC's own task."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from prometheus_client import Counter, Histogram

from headrace.runtime.auth import AUTHORIZATION_KEY, Authenticator
from headrace.runtime.errors import HeadraceError, from_rpc_error, status_code_for, trailing_metadata_for
from headrace.runtime.request_context import (
    REQUEST_ID_KEY,
    TENANT_KEY,
    accept_request_id,
    deadline_from_remaining,
    deadline_var,
    request_id_var,
    tenant_var,
)

log = logging.getLogger(__name__)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]

# Health checks and reflection answer without credentials.
_OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode() if isinstance(value, bytes) else value
    return None


def _wrap_handler(
    handler: grpc.RpcMethodHandler,
    wrap_unary: Callable[[UnaryBehavior], UnaryBehavior],
    wrap_stream: Callable[[StreamBehavior], StreamBehavior],
) -> grpc.RpcMethodHandler:
    """The same handler with its behavior wrapped (unary or streaming reply)."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **kwargs)


class _BehaviorInterceptor(grpc.aio.ServerInterceptor):
    """Base: run `_enter` before the behavior, `_on_error` on failure."""

    def _applies(self, method: str) -> bool:
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self._applies(method):
            return handler
        return _wrap_handler(handler, lambda b: self._wrap_unary(b, method), lambda b: self._wrap_stream(b, method))

    def _wrap_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = await self._enter(context, method)
            try:
                result = await behavior(request, context)
            except BaseException as exc:
                await self._on_error(exc, context, method, started)
                raise
            self._on_success(method, started)
            return result

        return unary

    def _wrap_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = await self._enter(context, method)
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                await self._on_error(exc, context, method, started)
                raise
            self._on_success(method, started)

        return stream

    async def _enter(self, context: grpc.aio.ServicerContext, method: str) -> float:
        return 0.0

    async def _on_error(
        self, exc: BaseException, context: grpc.aio.ServicerContext, method: str, started: float
    ) -> None:
        return None

    def _on_success(self, method: str, started: float) -> None:
        return None


class RequestContextInterceptor(_BehaviorInterceptor):
    """Sets the request id, deadline and (on internal hops) tenant of the RPC."""

    def __init__(self, *, trust_tenant_metadata: bool) -> None:
        # Only internal services trust x-headrace-tenant: the router must
        # take the tenant from authentication, never from the caller.
        self._trust_tenant_metadata = trust_tenant_metadata

    async def _enter(self, context: grpc.aio.ServicerContext, method: str) -> float:
        request_id_var.set(accept_request_id(metadata_value(context, REQUEST_ID_KEY)))
        deadline_var.set(deadline_from_remaining(context.time_remaining()))
        if self._trust_tenant_metadata:
            tenant_var.set(metadata_value(context, TENANT_KEY) or "")
        return 0.0


class AuthInterceptor(_BehaviorInterceptor):
    """Maps `authorization` metadata to a tenant, or rejects the call."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def _applies(self, method: str) -> bool:
        return not method.startswith(_OPEN_METHOD_PREFIXES)

    async def _enter(self, context: grpc.aio.ServicerContext, method: str) -> float:
        # Unauthenticated raised here reaches the error interceptor.
        tenant_var.set(self._authenticator.authenticate(metadata_value(context, AUTHORIZATION_KEY)))
        return 0.0


class ErrorInterceptor(_BehaviorInterceptor):
    """The one place where exceptions become statuses: a HeadraceError keeps
    its code and message, a failed downstream call keeps its status, and
    anything else is logged and reported as INTERNAL with the request id."""

    async def _on_error(
        self, exc: BaseException, context: grpc.aio.ServicerContext, method: str, started: float
    ) -> None:
        if not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
            return  # cancellation, generator exit, or an abort already made
        error = from_rpc_error(exc) if isinstance(exc, grpc.aio.AioRpcError) else exc
        request_id = ((REQUEST_ID_KEY, request_id_var.get()),)
        if isinstance(error, HeadraceError):
            await context.abort(status_code_for(error), error.message, trailing_metadata_for(error) + request_id)
        log.exception("unhandled error in %s", method)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {request_id_var.get()}); see the service log",
            request_id,
        )


_HANDLED = Counter("headrace_grpc_server_handled_total", "RPCs completed, by status", ["method", "code"])
_HANDLING = Histogram(
    "headrace_grpc_server_handling_seconds",
    "RPC duration (streams: until the last message)",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


def _status_name(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    if isinstance(exc, HeadraceError):
        return status_code_for(exc).name
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED.name
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return grpc.StatusCode.INTERNAL.name


class MetricsInterceptor(_BehaviorInterceptor):
    """Counts every RPC by method and status, and times it."""

    async def _enter(self, context: grpc.aio.ServicerContext, method: str) -> float:
        return time.perf_counter()

    def _on_success(self, method: str, started: float) -> None:
        _HANDLED.labels(method=method, code="OK").inc()
        _HANDLING.labels(method=method).observe(time.perf_counter() - started)

    async def _on_error(
        self, exc: BaseException, context: grpc.aio.ServicerContext, method: str, started: float
    ) -> None:
        _HANDLED.labels(method=method, code=_status_name(exc, context)).inc()
        _HANDLING.labels(method=method).observe(time.perf_counter() - started)
