"""The server interceptor every service shares. For each RPC, in order:

1. request context: the request id (the caller's, if safe, else a new one),
   the deadline, and on internal hops the tenant from x-headrace-tenant;
1b. service identity (internal services with internal TLS): the peer's
   certificate role must be allowed the method, and only a role that
   vouches for tenants may send x-headrace-tenant (service_identity.py);
2. authentication (router only): `authorization` metadata -> tenant;
3. the handler;
4. metrics: every RPC counted by method and status, and timed;
5. errors: the one place where exceptions become statuses. A HeadraceError
   keeps its code and message, a failed downstream call keeps its status,
   anything else is logged and reported as INTERNAL with the request id.

These are steps of one wrapper rather than a chain of interceptors: every
streamed message passes through each wrapping layer, and on the token path
those layers cost more than the steps themselves. Tracing comes from
opentelemetry-instrumentation-grpc, added in front when tracing is on.
What is set here lives in the RPC's own task (the wrapper runs inside it).
"""

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
from headrace.runtime.errors import HeadraceError, from_rpc_error, status_code_for, status_trailers
from headrace.runtime.log_limits import RepeatLimitedLog
from headrace.runtime.message_decoding import decoded, decoded_stream, tolerant
from headrace.runtime.request_context import (
    REQUEST_ID_KEY,
    TENANT_KEY,
    accept_request_id,
    deadline_from_remaining,
    deadline_var,
    request_id_var,
    tenant_var,
)
from headrace.runtime.service_identity import admit, peer_var
from headrace.runtime.telemetry import note_request_id

log = logging.getLogger(__name__)
_UNHANDLED = RepeatLimitedLog(log)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]

# Health checks and reflection answer without credentials.
_OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

_HANDLED = Counter("headrace_grpc_server_handled_total", "RPCs completed, by status", ["method", "code"])
_HANDLING = Histogram(
    "headrace_grpc_server_handling_seconds",
    "RPC duration (streams: until the last message)",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _status_name(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    if isinstance(exc, HeadraceError):
        code = status_code_for(exc)
    elif isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
    elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        code = grpc.StatusCode.CANCELLED
    elif isinstance(exc, grpc.aio.AbortError):
        aborted = context.code()
        if not isinstance(aborted, grpc.StatusCode):
            return "UNKNOWN"
        code = aborted
    return str(code.name)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, *, authenticator: Authenticator | None, service_identity: bool = False) -> None:
        self._authenticator = authenticator
        # Internal servers behind mutual TLS check each peer's role per call.
        self._service_identity = service_identity
        # Wrapped once per method, not per call: method -> (handler, wrapped).
        # Bounded by the methods the server has (unknown ones get None).
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        kwargs = {
            # Bytes that do not decode reach the handler as a marker, and
            # become INVALID_ARGUMENT below (message_decoding.py).
            "request_deserializer": tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._wrap_unary(handler.unary_unary, method), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._wrap_stream(handler.unary_stream, method), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, client_streams=True), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method, client_streams=True), **kwargs
        )

    def _wrap_unary(self, behavior: UnaryBehavior, method: str, *, client_streams: bool = False) -> UnaryBehavior:
        handled_ok, handling = _HANDLED.labels(method=method, code="OK"), _HANDLING.labels(method=method)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                self._enter(context, method)
                request = decoded_stream(request) if client_streams else decoded(request)
                result = await behavior(request, context)
            except BaseException as exc:
                await self._fail(exc, context, method, started)
                raise
            handled_ok.inc()
            handling.observe(time.perf_counter() - started)
            return result

        return unary

    def _wrap_stream(self, behavior: StreamBehavior, method: str, *, client_streams: bool = False) -> StreamBehavior:
        handled_ok, handling = _HANDLED.labels(method=method, code="OK"), _HANDLING.labels(method=method)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                self._enter(context, method)
                request = decoded_stream(request) if client_streams else decoded(request)
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                await self._fail(exc, context, method, started)
                raise
            handled_ok.inc()
            handling.observe(time.perf_counter() - started)

        return stream

    def _enter(self, context: grpc.aio.ServicerContext, method: str) -> None:
        request_id = accept_request_id(metadata_value(context, REQUEST_ID_KEY))
        request_id_var.set(request_id)
        note_request_id(request_id)
        deadline_var.set(deadline_from_remaining(context.time_remaining()))
        if self._authenticator is None:
            # Internal hop: the router authenticated and passed the tenant on.
            tenant = metadata_value(context, TENANT_KEY) or ""
            if self._service_identity:
                self._admit_peer(context, method, tenant)
            tenant_var.set(tenant)
        elif not method.startswith(_OPEN_METHOD_PREFIXES):
            # Never from the caller's x-headrace-tenant: only from its key.
            tenant_var.set(self._authenticator.authenticate(metadata_value(context, AUTHORIZATION_KEY)))

    @staticmethod
    def _admit_peer(context: grpc.aio.ServicerContext, method: str, tenant: str) -> None:
        """Step 1b: who is calling (the TLS handshake verified the certificate
        against the deployment's CA), and may it make this call?"""
        peer_var.set(admit(context.auth_context(), method, tenant))

    async def _fail(self, exc: BaseException, context: grpc.aio.ServicerContext, method: str, started: float) -> None:
        """Count the failure, then turn it into a status (AbortError), unless
        it is a cancellation or an abort already made (re-raised as is)."""
        _HANDLED.labels(method=method, code=_status_name(exc, context)).inc()
        _HANDLING.labels(method=method).observe(time.perf_counter() - started)
        if not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
            return
        error = from_rpc_error(exc) if isinstance(exc, grpc.aio.AioRpcError) else exc
        request_id = ((REQUEST_ID_KEY, request_id_var.get()),)
        if isinstance(error, HeadraceError):
            await context.abort(status_code_for(error), error.message, status_trailers(error) + request_id)
        # Once per method and kind of failure per interval: a failure on
        # every call (a dependency down) would otherwise log a traceback each.
        _UNHANDLED.error((method, type(exc).__name__), "unhandled error in %s", method, exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {request_id_var.get()}); see the service log",
            request_id,
        )
