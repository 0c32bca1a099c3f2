"""The WebSocket at /v1/realtime/chat: the SSE stream's chunks as JSON
messages, requests one after another on one socket, cancel, and a closed
socket cancelling the generation in the engine."""

from __future__ import annotations

import json
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from headrace.local.redis_server import RedisServer
from tests.integration.router.gateway.conftest import eventually, gateway_settings, running_gateway
from tests.support.mesh import InProcessMesh


def ws_url(mesh: InProcessMesh) -> str:
    return f"ws{mesh.http_url.removeprefix('http')}/v1/realtime/chat"


def request(request_id: str, max_tokens: int, **fields: Any) -> str:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"hello {uuid.uuid4().hex}"}],
        "max_tokens": max_tokens,
        **fields,
    }
    return json.dumps({"type": "chat.request", "id": request_id, "request": body})


async def receive(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await ws.recv())
    return message


async def until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """Messages up to and including the first of type `kind`."""
    seen = []
    while True:
        message = await receive(ws)
        seen.append(message)
        if message["type"] == kind:
            return seen


async def test_a_request_streams_the_same_chunks_as_sse(gateway_mesh: InProcessMesh) -> None:
    async with connect(ws_url(gateway_mesh)) as ws:
        await ws.send(request("q1", 5, stream_options={"include_usage": True}))
        messages = await until(ws, "chat.done")
        started, *deltas, done = messages
        assert started["type"] == "chat.started" and started["id"] == "q1"
        assert started["headers"]["x-headrace-model"] == "smollm2@1"
        assert started["headers"]["x-headrace-cache"] == "miss"
        chunks = [m["chunk"] for m in deltas]
        assert all(m["type"] == "chat.delta" and m["id"] == "q1" for m in deltas)
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        content = [c for c in chunks if c["choices"]]
        assert len(content) == 5 and content[-1]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == 5
        assert done == {"type": "chat.done", "id": "q1", "request_id": started["request_id"], "cancelled": False}

        # The socket serves the next request, with its own request id.
        await ws.send(request("q2", 2))
        second = await until(ws, "chat.done")
        assert len([m for m in second if m["type"] == "chat.delta"]) == 2
        assert second[0]["request_id"] != started["request_id"]


async def test_errors_are_messages_and_the_socket_stays_usable(gateway_mesh: InProcessMesh) -> None:
    async with connect(ws_url(gateway_mesh)) as ws:
        await ws.send(request("bad", 2, model="gpt-9"))
        error = await receive(ws)
        assert error["type"] == "error" and error["id"] == "bad" and error["status"] == 404
        assert "unknown model 'gpt-9'" in error["error"]["message"]
        await ws.send(json.dumps({"type": "dance"}))
        error = await receive(ws)
        assert error["status"] == 400 and "type: expected 'chat.request' or 'chat.cancel'" in error["error"]["message"]
        await ws.send(json.dumps({"type": "chat.request", "request": {"messages": []}}))
        error = await receive(ws)
        assert error["status"] == 400 and "request.messages" in error["error"]["message"]
        # Not text (a lone surrogate), nested past any request, or binary:
        # each answered by name, and the socket stays open.
        await ws.send(request("s", 2, user="\ud800"))
        error = await receive(ws)
        assert error["status"] == 400 and "request.user: not valid Unicode" in error["error"]["message"]
        await ws.send('{"type": "chat.request", "request": ' + "[" * 1000 + "]" * 1000 + "}")
        error = await receive(ws)
        assert error["status"] == 400 and "nested deeper than 64 levels" in error["error"]["message"]
        await ws.send(b'{"type": "chat.cancel"}')
        error = await receive(ws)
        assert error["status"] == 400 and "got binary" in error["error"]["message"]
        await ws.send(request("ok", 1))
        assert (await until(ws, "chat.done"))[-1]["id"] == "ok"


async def test_cancel_and_closing_the_socket_stop_the_engine(redis_server: RedisServer) -> None:
    settings = gateway_settings(
        redis_server.url, pools={"smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 1, "tokens_per_s": 20}}}
    )
    async with running_gateway(settings) as mesh:
        engine = mesh.workers[0].app.engine
        async with connect(ws_url(mesh)) as ws:
            await ws.send(request("long", 500))
            await until(ws, "chat.delta")
            assert engine.stats().running == 1
            await ws.send(json.dumps({"type": "chat.cancel"}))
            done = (await until(ws, "chat.done"))[-1]
            assert done["cancelled"] is True and done["id"] == "long"
            assert await eventually(lambda: engine.stats().running == 0)

            await ws.send(request("again", 500))
            await until(ws, "chat.delta")
            assert engine.stats().running == 1
        # The socket closed mid-stream.
        assert await eventually(lambda: engine.stats().running == 0)
        assert await eventually(lambda: len(mesh.dispatcher.leases) == 0)
