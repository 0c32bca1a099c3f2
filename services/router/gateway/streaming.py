"""Relaying a stream of deltas to a client, bounded, for SSE and WebSocket.

    worker stream ──pull──▶ send buffer (N deltas) ──write──▶ client
                    ▲ pauses while the buffer is full

A producer pulls deltas from the flow into a bounded buffer; a consumer
writes them to the client. A slow reader fills the transport, the writes
wait, the buffer fills, and the pull from the worker pauses (gRPC's flow
control carries the pause on to the worker). A write that makes no progress
for `stall_timeout_s` cuts the stream off. A client that goes away (or a
WebSocket cancel) stops the relay at once. However it ends, the flow's
stream is closed, which cancels the worker call and so frees the sequence
in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from headrace.runtime.errors import HeadraceError
from services.router.gateway import metrics
from services.router.gateway.errors import as_headrace_error, error_detail, internal_error
from services.router.gateway.protocol import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)

T = TypeVar("T")

DONE_EVENT = b"data: [DONE]\n\n"


class ClientGone(Exception):
    """A writer's transport says the client has left."""


class StreamEnd(enum.Enum):
    COMPLETED = "completed"
    # The flow raised: the error goes to the client as a final event.
    FAILED = "failed"
    DISCONNECTED = "disconnected"
    STALLED = "stalled"


@dataclass(frozen=True)
class RelayResult:
    end: StreamEnd
    error: HeadraceError | None = None


@dataclass(frozen=True)
class _Failure:
    error: HeadraceError


_END: Any = object()


@dataclass(frozen=True)
class RelayLimits:
    buffer: int
    stall_timeout_s: float


class _Relay(Generic[T]):
    def __init__(self, source: AsyncIterator[T], write: Callable[[T], Awaitable[None]], limits: RelayLimits) -> None:
        self._source = source
        self._write = write
        self._limits = limits
        self._buffer: asyncio.Queue[Any] = asyncio.Queue(maxsize=limits.buffer)
        self._loop = asyncio.get_running_loop()
        # When the write in progress began (None: no write in progress).
        self._writing_since: float | None = None
        self._stalled = False
        self._watchdog: asyncio.TimerHandle | None = None

    async def produce(self) -> None:
        try:
            async for item in self._source:
                await self._buffer.put(item)
        except Exception as exc:
            error = as_headrace_error(exc)
            if error is None:
                log.exception("stream failed")
                error = internal_error()
            await self._buffer.put(_Failure(error))
        else:
            await self._buffer.put(_END)

    async def consume(self) -> RelayResult:
        try:
            while True:
                item = await self._buffer.get()
                if item is _END:
                    return RelayResult(StreamEnd.COMPLETED)
                if isinstance(item, _Failure):
                    return RelayResult(StreamEnd.FAILED, item.error)
                self._writing_since = self._loop.time()
                try:
                    await self._write(item)
                except ClientGone:
                    return RelayResult(StreamEnd.DISCONNECTED)
                self._writing_since = None
        except asyncio.CancelledError:
            if not self._stalled:
                raise
            # The watchdog's cancel, not the caller's.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return RelayResult(StreamEnd.STALLED)

    def watch(self, consumer: asyncio.Task[RelayResult]) -> None:
        """Cut `consumer` off once one write has waited stall_timeout_s. One
        timer per stall_timeout_s, re-armed from the write in progress,
        instead of a timeout armed and cancelled around every write."""
        now = self._loop.time()
        since = self._writing_since
        if since is not None and now - since >= self._limits.stall_timeout_s:
            self._stalled = True
            consumer.cancel()
            self._watchdog = None
            return
        start = now if since is None else since
        self._watchdog = self._loop.call_at(start + self._limits.stall_timeout_s, self.watch, consumer)

    def stop_watching(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


async def relay(
    source: AsyncIterator[T],
    write: Callable[[T], Awaitable[None]],
    *,
    limits: RelayLimits,
    stop: Callable[[], Coroutine[Any, Any, object]],
) -> RelayResult:
    """Write every item of `source` through `write` until it ends, fails,
    the reader stalls (one write takes stall_timeout_s), or `stop()` returns
    (the client left or cancelled). The source is closed before this
    returns, however it ended."""
    state: _Relay[T] = _Relay(source, write, limits)
    producer = asyncio.create_task(state.produce(), name="relay-produce")
    consumer = asyncio.create_task(state.consume(), name="relay-consume")
    state.watch(consumer)
    watcher = asyncio.create_task(stop(), name="relay-watch")
    try:
        done, _pending = await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if consumer in done:
            return consumer.result()
        return RelayResult(StreamEnd.DISCONNECTED)
    finally:
        state.stop_watching()
        tasks = (watcher, consumer, producer)
        for task in tasks:
            task.cancel()
        # Wait for the cancellations to land, so the flow's cleanup (worker
        # call cancelled, lease released) has run when this returns.
        await asyncio.gather(*tasks, return_exceptions=True)
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def stalled_error(stall_timeout_s: float) -> ErrorDetail:
    return ErrorDetail(
        message=f"stream cut off: the client took nothing for {stall_timeout_s:g} s; the generation was cancelled",
        type="timeout",
        code="slow_reader",
    )


def final_error(result: RelayResult, stall_timeout_s: float) -> ErrorDetail | None:
    """The error a stream ends with, if it did not complete."""
    if result.end is StreamEnd.STALLED:
        return stalled_error(stall_timeout_s)
    if result.end is StreamEnd.FAILED and result.error is not None:
        metrics.ERRORS.labels(type=type(result.error).__name__).inc()
        return error_detail(result.error)
    return None


def sse_event(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


class EventStreamResponse(Response):
    """An SSE answer: `events` (each already `data: ...\\n\\n`) relayed under
    the gateway's bounds, then `data: [DONE]`, or a final error event."""

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncIterator[bytes], *, headers: dict[str, str], limits: RelayLimits, grace_s: float
    ) -> None:
        self._events = events
        self._limits = limits
        # How long the final event may wait for a stalled reader.
        self._grace_s = grace_s
        self.status_code = 200
        self.background = None
        self.init_headers(
            {
                **headers,
                "cache-control": "no-cache",
                # Tells a proxy in front (nginx) not to buffer the stream.
                "x-accel-buffering": "no",
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def write(event: bytes) -> None:
            await send({"type": "http.response.body", "body": event, "more_body": True})

        async def client_left() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        result = await relay(self._events, write, limits=self._limits, stop=client_left)
        metrics.STREAMS_ENDED.labels(transport="sse", outcome=result.end.value).inc()
        if result.end is StreamEnd.DISCONNECTED:
            return
        error = final_error(result, self._limits.stall_timeout_s)
        final = DONE_EVENT if error is None else sse_event(ErrorBody(error=error).model_dump_json())
        try:
            async with asyncio.timeout(self._grace_s):
                await send({"type": "http.response.body", "body": final, "more_body": False})
        except TimeoutError:
            # Still not reading: give up on the last event; the server
            # closes the connection once this returns.
            log.info("stream cut off; its reader never took the final event")
