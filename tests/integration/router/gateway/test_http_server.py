"""Uvicorn in the router's loop: binding up front, Nagle off on every
connection (or each SSE event after the headers waits for a delayed ACK),
and a stop that closes the listener."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from headrace.runtime.config import GatewaySettings
from services.router.gateway.http_server import HttpServer


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("hello")(scope, receive, send)


async def test_connections_have_nagle_off_and_stop_closes_the_listener() -> None:
    server = HttpServer(hello, host="127.0.0.1", port=0, settings=GatewaySettings())
    port = await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    internal = server._server  # the uvicorn server: its connections' sockets
    assert internal is not None
    sockets = [c.transport.get_extra_info("socket") for c in internal.server_state.connections]
    assert sockets and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)
    writer.close()
    await server.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_taken_port_is_a_clear_error_at_bind() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = HttpServer(hello, host="127.0.0.1", port=squatter.getsockname()[1], settings=GatewaySettings())
        with pytest.raises(OSError, match="could not bind the HTTP gateway to 127.0.0.1"):
            server.bind()


# --- connection limits (http_limits.py) -------------------------------------


async def read_body_back(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers with its length."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await PlainTextResponse(str(size))(scope, receive, send)


async def limited_server(**limits: float) -> HttpServer:
    settings = GatewaySettings(**{"header_timeout_s": 5.0, "body_timeout_s": 5.0, **limits})
    server = HttpServer(read_body_back, host="127.0.0.1", port=0, settings=settings)
    await server.start()
    return server


async def exchange(port: int, *parts: bytes) -> tuple[bytes, bytes]:
    """Send `parts`, then read until the server closes: (head, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for part in parts:
        writer.write(part)
    answer = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_a_head_over_the_limit_is_431_and_a_head_under_it_is_served() -> None:
    server = await limited_server(max_header_bytes=4096)
    try:
        head, body = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431") and b"connection: close" in head
        assert json.loads(body)["error"]["message"] == "request line and headers: over the limit of 4096 bytes"
        head, body = await exchange(
            server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Ok: " + b"a" * 3000 + b"\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 200") and body == b"0"
    finally:
        await server.stop()


async def test_a_slow_head_is_408_and_a_silent_connection_is_closed() -> None:
    server = await limited_server(header_timeout_s=0.3)
    try:
        # Slowloris: part of a head, then nothing.
        head, body = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        assert "not received within 0.3s" in json.loads(body)["error"]["message"]
        # Connected, never a byte: closed without an answer.
        assert await exchange(server.port) == (b"", b"")
    finally:
        await server.stop()


async def test_a_stalled_body_is_408_and_the_app_sees_a_disconnect() -> None:
    server = await limited_server(body_timeout_s=0.3)
    try:
        head, body = await exchange(
            server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", b"x" * 10
        )
        assert head.startswith(b"HTTP/1.1 408")
        assert "request body: nothing received for 0.3s" in json.loads(body)["error"]["message"]
        # A body that keeps coming is read whole.
        head, body = await exchange(
            server.port, b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 20\r\n\r\n", b"y" * 20
        )
        assert head.startswith(b"HTTP/1.1 200") and body == b"20"
    finally:
        await server.stop()


async def test_a_body_left_unsent_after_the_answer_is_closed_too() -> None:
    # The app answers without reading the body; the client never finishes it.
    settings = GatewaySettings(body_timeout_s=0.3, keepalive_timeout_s=3600)
    server = HttpServer(hello, host="127.0.0.1", port=0, settings=settings)
    await server.start()
    try:
        head, body = await exchange(
            server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", b"x" * 10
        )
        assert head.startswith(b"HTTP/1.1 200") and body == b"hello"
    finally:
        await server.stop()


async def test_connections_past_the_cap_are_refused_at_once_and_idle_ones_closed() -> None:
    server = await limited_server(max_connections=3, keepalive_timeout_s=1)
    try:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        head, body = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        # A connection that goes makes room for the next.
        reader, writer = held.pop()
        writer.close()
        assert await eventually_served(server.port)
        # A kept-alive connection left idle is closed by the server.
        reader, writer = held[0]
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        assert (await asyncio.wait_for(reader.read(), timeout=30)).endswith(b"0")
        for _reader, writer in held:
            writer.close()
    finally:
        await server.stop()


async def eventually_served(port: int) -> bool:
    for _ in range(100):
        head, _body = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if head.startswith(b"HTTP/1.1 200"):
            return True
        await asyncio.sleep(0.05)
    return False
