"""The shared server interceptor: each method is wrapped once, while the
request context and the metrics stay per call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY

from headrace.runtime.errors import NotFound
from headrace.runtime.interceptors import ServerInterceptor
from headrace.runtime.request_context import REQUEST_ID_KEY, current_request_id


class _Item:
    def __init__(self, key: str, value: str) -> None:
        self.key, self.value = key, value


class _Context:
    def __init__(self, request_id: str) -> None:
        self._metadata = (_Item(REQUEST_ID_KEY, request_id),)
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[_Item, ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str, trailing: Any = ()) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


def _count(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value("headrace_grpc_server_handled_total", {"method": method, "code": code})
    return value or 0.0


async def test_a_method_is_wrapped_once_and_each_call_gets_its_own_context() -> None:
    seen: list[str] = []

    async def behavior(request: Any, context: Any) -> AsyncIterator[str]:
        seen.append(current_request_id())
        yield request

    handler = grpc.unary_stream_rpc_method_handler(behavior)

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return handler

    interceptor = ServerInterceptor(authenticator=None)
    method = "/test.Cached/Stream"
    first = await interceptor.intercept_service(continuation, _Details(method))
    second = await interceptor.intercept_service(continuation, _Details(method))
    assert first is second
    before = _count(method, "OK")
    for request_id in ("call-a", "call-b"):
        assert [item async for item in first.unary_stream("x", _Context(request_id))] == ["x"]
    assert seen == ["call-a", "call-b"]
    assert _count(method, "OK") == before + 2


async def test_a_new_handler_for_the_same_method_is_wrapped_again() -> None:
    async def one(request: Any, context: Any) -> str:
        return "one"

    async def two(request: Any, context: Any) -> str:
        return "two"

    handlers = [grpc.unary_unary_rpc_method_handler(one), grpc.unary_unary_rpc_method_handler(two)]
    interceptor = ServerInterceptor(authenticator=None)

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return handlers.pop(0)

    details = _Details("/test.Replaced/Call")
    first = await interceptor.intercept_service(continuation, details)
    second = await interceptor.intercept_service(continuation, details)
    assert await first.unary_unary(None, _Context("r1")) == "one"
    assert await second.unary_unary(None, _Context("r2")) == "two"


async def test_an_error_becomes_its_status_and_is_counted() -> None:
    async def behavior(request: Any, context: Any) -> str:
        raise NotFound("no such thing")

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(behavior)

    method = "/test.Failing/Call"
    wrapped = await ServerInterceptor(authenticator=None).intercept_service(continuation, _Details(method))
    context = _Context("r3")
    before = _count(method, "NOT_FOUND")
    with pytest.raises(grpc.aio.AbortError):
        await wrapped.unary_unary(None, context)
    assert context.aborted == (grpc.StatusCode.NOT_FOUND, "no such thing")
    assert _count(method, "NOT_FOUND") == before + 1
