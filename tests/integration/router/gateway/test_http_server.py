"""Uvicorn in the router's loop: binding up front, Nagle off on every
connection (or each SSE event after the headers waits for a delayed ACK),
and a stop that closes the listener."""

from __future__ import annotations

import asyncio
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
