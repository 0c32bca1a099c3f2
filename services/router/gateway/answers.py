"""Answering a generation over HTTP, for chat and text completions alike:
whole (JSON) or streamed (SSE), with the how-it-was-served headers, and
cancelled in the engine when the client goes away.

A stream's first delta is awaited before the response starts, so that an
error before it (unknown model, rate limit, no worker, deadline) is an
HTTP status rather than an event in a 200 stream; the headers need its
route too. From then on, deltas are relayed as they come (streaming.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from headrace.request_rules.served_by import served_by_headers
from headrace.runtime.errors import Cancelled, Internal
from headrace.runtime.request_context import current_request_id, current_tenant
from headrace.v1 import generation_pb2
from services.router.flow_protocols import closing
from services.router.gateway.dependencies import GatewayServices
from services.router.gateway.streaming import EventStreamResponse, sse_event

# What a whole answer cost, USD (streams: in the last chunk's usage.cost_usd).
COST_KEY = "x-headrace-cost-usd"

T = TypeVar("T")

# How long a stream's final event (an error, or [DONE] after a stall) may
# wait for a reader that has stopped reading.
FINAL_EVENT_GRACE_S = 5.0


class Chunker(Protocol):
    def encode(self, chunk: generation_pb2.GenerateStreamResponse) -> Sequence[str]:
        """The delta as OpenAI chunk objects, in JSON."""
        ...


async def until_stopped(work: Awaitable[T], stop: Awaitable[None], *, reason: str) -> T:
    """`work`'s result, or Cancelled(reason) if `stop` completes first (the
    work is cancelled then: the flow cancels the worker call, the engine
    aborts). HTTP stops on the client's disconnect, the WebSocket on a
    cancel message too (realtime.py).

    The work runs in the caller's own task, with one watcher task beside
    it that cancels the caller when `stop` completes: no task of its own
    and no wait on two, so the answer is sent the moment the work returns,
    before the background calls it left behind (the cache's store, the
    lease's release) take the event loop."""
    caller = asyncio.current_task()
    if caller is None:
        raise RuntimeError("until_stopped runs inside a task")
    stopped = False
    over = False

    def on_stop(watcher: asyncio.Future[None]) -> None:
        nonlocal stopped
        if watcher.cancelled():
            return
        # A stop that failed (the connection broke) stops the work too; its
        # error is read here, not left for the garbage collector to log.
        watcher.exception()
        if over:
            # The work ended first: nothing to stop any more.
            return
        stopped = True
        caller.cancel()

    # The stop is a task of its own (a coroutine never started is closed
    # by its task's cancel, never left unawaited).
    watcher = asyncio.ensure_future(stop)
    watcher.add_done_callback(on_stop)
    try:
        return await work
    except asyncio.CancelledError:
        if not stopped:
            raise
        raise Cancelled(reason) from None
    finally:
        over = True
        watcher.cancel()
        if stopped:
            # The cancel was ours, however the work ended (raised it, turned
            # it into another error, or swallowed it and finished): the
            # task is no longer being cancelled.
            caller.uncancel()


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or Cancelled if the client leaves first."""

    async def client_left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return await until_stopped(work, client_left(), reason="the client disconnected")


def json_response(body: BaseModel, headers: Sequence[tuple[str, str]]) -> Response:
    return Response(body.model_dump_json(), headers=dict(headers), media_type="application/json")


async def _first(chunks: AsyncIterator[generation_pb2.GenerateStreamResponse]) -> generation_pb2.GenerateStreamResponse:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise Internal("the answer's stream ended before its first delta") from None


async def _events(
    first: generation_pb2.GenerateStreamResponse,
    chunks: AsyncIterator[generation_pb2.GenerateStreamResponse],
    chunker: Chunker,
) -> AsyncIterator[bytes]:
    # One write per delta (the usage chunk rides with the last), so each
    # delta leaves as soon as the worker produced it.
    async with closing(chunks):
        yield b"".join(sse_event(item) for item in chunker.encode(first))
        async for chunk in chunks:
            yield b"".join(sse_event(item) for item in chunker.encode(chunk))


async def answer_generation(
    request: Request,
    services: GatewayServices,
    proto: generation_pb2.GenerateRequest,
    *,
    stream: bool,
    whole: Callable[[generation_pb2.GenerateResponse, int], BaseModel],
    chunker: Callable[[str, int], Chunker],
) -> Response:
    """`whole(response, created)` builds the unary answer; `chunker(request_id,
    created)` converts a stream's deltas."""
    request_id, tenant, created = current_request_id(), current_tenant(), int(time.time())
    if not stream:
        response = await until_disconnected(
            request, services.generation.complete(proto, tenant=tenant, request_id=request_id)
        )
        return json_response(
            whole(response, created),
            [*served_by_headers(response.request_id, response.route), (COST_KEY, f"{response.cost.usd:.10f}")],
        )
    chunks = services.generation.stream(proto, tenant=tenant, request_id=request_id)
    first = await until_disconnected(request, _first(chunks))
    return EventStreamResponse(
        _events(first, chunks, chunker(request_id, created)),
        headers=dict(served_by_headers(request_id, first.route)),
        limits=services.relay_limits,
        grace_s=max(FINAL_EVENT_GRACE_S, services.settings.gateway.stall_timeout_s),
    )
