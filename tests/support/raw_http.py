"""A minimal HTTP/1.1 client on a plain socket, for what a full client
hides: when each SSE event arrives, a reader that stops reading, a client
that hangs up mid-stream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class SseEvent:
    data: str
    # time.perf_counter() when the event's last byte arrived.
    at: float

    def json(self) -> Any:
        return json.loads(self.data)


class RawHttpResponse:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def post(
        cls,
        url: str,
        path: str,
        body: Mapping[str, Any] | bytes,
        *,
        headers: Mapping[str, str] | None = None,
        receive_buffer: int | None = None,
    ) -> RawHttpResponse:
        """Send a POST and read the status line and headers."""
        response = await cls.send(url, path, body, headers=headers, receive_buffer=receive_buffer)
        await response.read_head()
        return response

    @classmethod
    async def send(
        cls,
        url: str,
        path: str,
        body: Mapping[str, Any] | bytes,
        *,
        headers: Mapping[str, str] | None = None,
        receive_buffer: int | None = None,
    ) -> RawHttpResponse:
        """Send a POST; read_head() then waits for the answer. `receive_buffer`
        shrinks the socket's receive buffer and this reader's own, so that
        not reading soon pushes back on the server."""
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (parts.hostname or "127.0.0.1", parts.port or 80))
        limit = receive_buffer if receive_buffer is not None else 2**16
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        return cls(reader, writer)

    async def read_head(self) -> None:
        status_line = await self._reader.readline()
        self.status = int(status_line.split()[1])
        while True:
            line = (await self._reader.readline()).decode().rstrip("\r\n")
            if not line:
                return
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self.headers.get("transfer-encoding") != "chunked":
            length = int(self.headers.get("content-length", "0"))
            yield await self._reader.readexactly(length)
            return
        while True:
            size = int((await self._reader.readline()).strip() or b"0", 16)
            if size == 0:
                return
            data = await self._reader.readexactly(size)
            await self._reader.readexactly(2)
            yield data

    async def body(self) -> bytes:
        return b"".join([chunk async for chunk in self._chunks()])

    async def events(self) -> AsyncIterator[SseEvent]:
        """SSE events as they arrive; ends with the stream (or the connection)."""
        pending = b""
        try:
            async for chunk in self._chunks():
                pending += chunk
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    for line in event.decode().splitlines():
                        if line.startswith("data: "):
                            yield SseEvent(line.removeprefix("data: "), time.perf_counter())
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    def hang_up(self) -> None:
        """Close the connection at once (as a client killed mid-stream)."""
        self._writer.transport.abort()

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
