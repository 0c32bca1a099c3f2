"""The WebSocket at /v1/realtime/chat: chat completions streamed as JSON
messages, the same chunks the SSE stream carries, one request at a time
per socket (a second one waits its turn).

    client: {"type": "chat.request", "id": "q1", "request": {<chat completion body>}}
    server: {"type": "chat.started", "id": "q1", "request_id": ..., "headers": {x-headrace-*...}}
            {"type": "chat.delta", "id": "q1", "chunk": {<chat.completion.chunk>}} ...
            {"type": "chat.done", "id": "q1", "request_id": ...}
    client: {"type": "chat.cancel"}   stops the request in progress (then chat.done, cancelled: true)
    server: {"type": "error", "id": ..., "status": 429, "error": {...}, "retry_after": 3}

The key is checked at the handshake (middleware.py). Each request gets its
own request id and deadline; the same bounded relay as SSE applies (a
stalled reader is cut off, a closed socket cancels the generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.websockets import WebSocket, WebSocketDisconnect

from headrace.request_rules.served_by import served_by_headers
from headrace.runtime.errors import (
    Cancelled,
    HeadraceError,
    Internal,
    InvalidArgument,
    mapping_for,
    trailing_metadata_for,
)
from headrace.runtime.request_context import (
    current_tenant,
    deadline_from_remaining,
    deadline_var,
    new_request_id,
    request_id_var,
)
from headrace.v1 import generation_pb2
from services.router.flow_protocols import closing
from services.router.gateway import convert, metrics
from services.router.gateway.answers import until_stopped
from services.router.gateway.body import parse_object, validate_model
from services.router.gateway.dependencies import GatewayServices
from services.router.gateway.errors import as_headrace_error, error_detail, internal_error
from services.router.gateway.protocol import (
    ChatCompletionChunk,
    RealtimeCancel,
    RealtimeChatRequest,
    RealtimeDelta,
    RealtimeDone,
    RealtimeError,
    RealtimeStarted,
)
from services.router.gateway.streaming import ClientGone, StreamEnd, final_error, relay

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime/chat"
# Requests a client may queue behind the one in progress.
_QUEUED = 4


class _Session:
    def __init__(self, websocket: WebSocket, services: GatewayServices) -> None:
        self._ws = websocket
        self._services = services
        self._requests: asyncio.Queue[RealtimeChatRequest] = asyncio.Queue(maxsize=_QUEUED)
        self._cancel = asyncio.Event()
        self._gone = asyncio.Event()
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        reader = asyncio.create_task(self._read(), name="realtime-read")
        try:
            while True:
                next_request = asyncio.create_task(self._requests.get())
                gone = asyncio.create_task(self._gone.wait())
                await asyncio.wait({next_request, gone}, return_when=asyncio.FIRST_COMPLETED)
                gone.cancel()
                if not next_request.done():
                    next_request.cancel()
                    return
                self._cancel.clear()
                await self._serve(next_request.result())
        except ClientGone:
            return
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self) -> None:
        """Take the client's messages as they come: a cancel acts at once,
        requests queue (bounded)."""
        try:
            while True:
                received = await self._ws.receive()
                if received["type"] == "websocket.disconnect":
                    break
                text = received.get("text")
                if text is None:
                    await self._send_error(None, InvalidArgument("expected JSON in a text message, got binary"))
                    continue
                try:
                    message = _parse(text)
                except InvalidArgument as exc:
                    await self._send_error(None, exc)
                    continue
                if isinstance(message, RealtimeCancel):
                    self._cancel.set()
                elif self._requests.full():
                    await self._send_error(message.id, InvalidArgument(f"more than {_QUEUED} requests queued"))
                else:
                    self._requests.put_nowait(message)
        except (WebSocketDisconnect, ClientGone, RuntimeError):
            # RuntimeError: Starlette's "not connected" once the socket closed.
            pass
        except Exception:
            # A bug, not the client's doing: say so and close as a server
            # error (1011) rather than drop the socket without a word.
            log.exception("realtime session failed reading a message")
            with contextlib.suppress(Exception):
                await self._send_error(None, internal_error())
                await self._ws.close(code=1011)
        finally:
            self._gone.set()

    async def _send(self, message: BaseModel) -> None:
        await self._send_text(message.model_dump_json())

    async def _send_text(self, text: str) -> None:
        try:
            async with self._send_lock:
                await self._ws.send_text(text)
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            raise ClientGone from exc

    async def _send_error(self, request_key: str | None, error: HeadraceError) -> None:
        retry_after = next((int(value) for _key, value in trailing_metadata_for(error)), None)
        await self._send(
            RealtimeError(
                id=request_key,
                status=mapping_for(error).http_status,
                error=error_detail(error),
                retry_after=retry_after,
            )
        )

    async def _stopped(self) -> None:
        cancel = asyncio.create_task(self._cancel.wait())
        gone = asyncio.create_task(self._gone.wait())
        try:
            await asyncio.wait({cancel, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
            gone.cancel()

    async def _serve(self, message: RealtimeChatRequest) -> None:
        request_id = new_request_id()
        request_id_var.set(request_id)
        deadline_var.set(deadline_from_remaining(self._services.settings.gateway.request_timeout_s))
        chunks = await self._start(message, request_id)
        if chunks is not None:
            await self._stream(message, request_id, *chunks)

    async def _start(
        self, message: RealtimeChatRequest, request_id: str
    ) -> tuple[generation_pb2.GenerateStreamResponse, AsyncIterator[generation_pb2.GenerateStreamResponse]] | None:
        """The first delta and the rest of the stream, or None when the
        request failed (an error message was sent) or was cancelled."""
        try:
            proto = convert.chat_request(
                message.request.model_copy(update={"stream": True}),
                generation_pb2.CachePolicy(),
                self._services.settings.limits,
            )
            chunks = self._services.generation.stream(proto, tenant=current_tenant(), request_id=request_id)
            first = await until_stopped(anext(chunks), self._stopped(), reason="cancelled by the client")
        except Cancelled:
            await self._send(RealtimeDone(id=message.id, request_id=request_id, cancelled=True))
            return None
        except StopAsyncIteration:
            await self._send_error(message.id, Internal("the answer's stream ended before its first delta"))
            return None
        except Exception as exc:
            failure = as_headrace_error(exc)
            if failure is None:
                log.exception("realtime request failed")
                failure = internal_error()
            await self._send_error(message.id, failure)
            return None
        headers = dict(served_by_headers(request_id, first.route))
        await self._send(RealtimeStarted(id=message.id, request_id=request_id, headers=headers))
        return first, chunks

    async def _stream(
        self,
        message: RealtimeChatRequest,
        request_id: str,
        first: generation_pb2.GenerateStreamResponse,
        chunks: AsyncIterator[generation_pb2.GenerateStreamResponse],
    ) -> None:
        options = message.request.stream_options
        chunker = convert.ChatChunks(
            request_id=request_id, created=int(time.time()), include_usage=options is not None and options.include_usage
        )

        # A chat.delta message is the chunk's JSON in an envelope made once per request.
        any_chunk = ChatCompletionChunk(id="", created=0, model="", choices=[])
        head, tail = convert.json_template(RealtimeDelta(id=message.id, chunk=any_chunk), any_chunk.model_dump_json())

        async def deltas() -> AsyncIterator[list[str]]:
            async with closing(chunks):
                yield [head + c + tail for c in chunker.encode(first)]
                async for chunk in chunks:
                    yield [head + c + tail for c in chunker.encode(chunk)]

        async def write(batch: list[str]) -> None:
            for delta in batch:
                await self._send_text(delta)

        limits = self._services.relay_limits
        result = await relay(deltas(), write, limits=limits, stop=self._stopped)
        metrics.STREAMS_ENDED.labels(transport="websocket", outcome=result.end.value).inc()
        if result.end is StreamEnd.DISCONNECTED:
            if not self._gone.is_set():
                await self._send(RealtimeDone(id=message.id, request_id=request_id, cancelled=True))
            return
        error = final_error(result, limits.stall_timeout_s)
        if error is None:
            await self._send(RealtimeDone(id=message.id, request_id=request_id))
            return
        # A stalled reader: 408, as a server that gave up waiting on its client.
        status = mapping_for(result.error).http_status if result.error is not None else 408
        with contextlib.suppress(ClientGone, TimeoutError):
            async with asyncio.timeout(limits.stall_timeout_s):
                await self._send(RealtimeError(id=message.id, status=status, error=error))
        if result.end is StreamEnd.STALLED:
            # A reader that takes nothing gets no more of our memory.
            raise ClientGone


def _parse(text: str) -> RealtimeChatRequest | RealtimeCancel:
    data = parse_object(text)
    kind = data.get("type")
    if kind == "chat.request":
        return validate_model(data, RealtimeChatRequest)
    if kind == "chat.cancel":
        return validate_model(data, RealtimeCancel)
    raise InvalidArgument(f"type: expected 'chat.request' or 'chat.cancel', got {kind!r}")


def realtime_router(services: GatewayServices) -> APIRouter:
    router = APIRouter()

    @router.websocket(REALTIME_PATH)
    async def realtime_chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await _Session(websocket, services).run()
        with contextlib.suppress(Exception):
            await websocket.close()

    return router
