"""What every HTTP request and WebSocket passes through, in one place (the
HTTP counterpart of headrace/runtime/interceptors.py):

1. request context: the request id (the caller's x-request-id if safe, else
   a new one; echoed on every answer), and the deadline (the gateway's
   request_timeout_s, or a shorter `x-headrace-timeout: SECONDS`);
2. authentication: `Authorization: Bearer KEY` -> tenant, for every path
   but /healthz (and /metrics when configured open); a refusal is a 401
   in OpenAI's error format (a WebSocket handshake gets the same 401);
3. metrics: requests by route and status, time to the response's headers.

A plain ASGI middleware: Starlette's BaseHTTPMiddleware would buffer and
re-wrap every streamed chunk.
"""

from __future__ import annotations

import math
import time
from typing import Final

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headrace.runtime.auth import AUTHORIZATION_KEY, Authenticator
from headrace.runtime.config import GatewaySettings
from headrace.runtime.errors import HeadraceError, InvalidArgument, Unauthenticated
from headrace.runtime.request_context import (
    REQUEST_ID_KEY,
    accept_request_id,
    deadline_from_remaining,
    deadline_var,
    request_id_var,
    tenant_var,
)
from headrace.runtime.telemetry import note_request_id
from services.router.gateway import metrics
from services.router.gateway.errors import error_response

TIMEOUT_HEADER: Final = "x-headrace-timeout"
HEALTH_PATH: Final = "/healthz"
METRICS_PATH: Final = "/metrics"


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, *, authenticator: Authenticator, settings: GatewaySettings) -> None:
        self._app = app
        self._authenticator = authenticator
        self._settings = settings
        self._open_paths = {HEALTH_PATH} | ({METRICS_PATH} if settings.open_metrics else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = accept_request_id(headers.get(REQUEST_ID_KEY))
        request_id_var.set(request_id)
        note_request_id(request_id)
        tenant_var.set("")
        started = time.perf_counter()

        async def send_with_context(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start", "websocket.accept"):
                if message["type"] != "websocket.accept":
                    response_headers = MutableHeaders(scope=message)
                    if REQUEST_ID_KEY not in response_headers:
                        response_headers[REQUEST_ID_KEY] = request_id
                status = message.get("status", 101)
                route = _route_of(scope)
                metrics.REQUESTS.labels(route=route, method=scope.get("method", "WS"), status=str(status)).inc()
                metrics.LATENCY.labels(route=route).observe(time.perf_counter() - started)
            await send(message)

        try:
            deadline_var.set(deadline_from_remaining(self._timeout_s(headers)))
            if scope["path"] not in self._open_paths:
                tenant_var.set(self._authenticator.authenticate(headers.get(AUTHORIZATION_KEY)))
        except HeadraceError as exc:
            await _refuse(exc, scope, receive, send_with_context)
            return
        await self._app(scope, receive, send_with_context)

    def _timeout_s(self, headers: Headers) -> float:
        default = self._settings.request_timeout_s
        value = headers.get(TIMEOUT_HEADER)
        if value is None:
            return default
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not seconds > 0 or math.isinf(seconds):
            raise InvalidArgument(f"{TIMEOUT_HEADER}: expected a positive number of seconds, got {value!r}")
        return min(seconds, default)


def _route_of(scope: Scope) -> str:
    # The route's template, never the raw path: a label per path would let
    # any client grow the metrics without bound.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


async def _refuse(error: HeadraceError, scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(error)
    if isinstance(error, Unauthenticated):
        response.headers["www-authenticate"] = "Bearer"
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    # A WebSocket handshake: answer it with the same HTTP error where the
    # server can (uvicorn can), else close before accepting (policy violation).
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {"type": "websocket.http.response.start", "status": response.status_code, "headers": response.raw_headers}
        )
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
