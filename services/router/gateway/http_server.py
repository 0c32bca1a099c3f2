"""Uvicorn inside the router's event loop, beside its gRPC server: one
process, one loop, so the gateway calls the flows in-process.

The socket is bound up front (`bind`), so a taken port fails the router at
start with a clear error, and port 0 picks a free one (tests). Signals stay
with the router's own `serve()`; stopping closes the listener, then gives
in-flight requests and streams a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from headrace.runtime.config import GatewaySettings
from services.router.gateway.http_limits import limited_protocol

log = logging.getLogger(__name__)


class _InLoopServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The router's serve() owns SIGTERM/SIGINT and stops this server.
        yield


class HttpServer:
    def __init__(self, app: ASGIApp, *, host: str, port: int, settings: GatewaySettings) -> None:
        self.host = host
        self.port = port
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            # Logging is the process's (configure_logging); requests are
            # counted in metrics rather than logged one by one.
            log_config=None,
            access_log=False,
            server_header=False,
            ws_max_size=settings.max_body_bytes,
            # Head size, read timeouts and the connection cap (http_limits.py).
            http=limited_protocol(settings),
            timeout_keep_alive=settings.keepalive_timeout_s,
            # Never None (wait forever): at least a second.
            timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace_s)),
        )
        self._grace_s = settings.shutdown_grace_s
        self._socket: socket.socket | None = None
        self._server: _InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> int:
        """Bind the listening socket now; returns the port (useful with port 0)."""
        if self._socket is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            # proto=IPPROTO_TCP: asyncio turns Nagle off (TCP_NODELAY) only on
            # accepted sockets whose proto says TCP; with 0, a small SSE event
            # after the headers waits ~40 ms for a delayed ACK.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                sock.close()
                raise OSError(
                    f"could not bind the HTTP gateway to {self.host}:{self.port}: is the port in use by another "
                    "program? (router.http_port)"
                ) from exc
            sock.listen(2048)
            sock.setblocking(False)
            self._socket = sock
            self.port = int(sock.getsockname()[1])
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> int:
        self.bind()
        assert self._socket is not None
        server = _InLoopServer(self._config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[self._socket]), name="http-gateway")
        while not server.started:
            if self._task.done():
                # Startup failed: surface its error.
                await self._task
                raise OSError("the HTTP gateway stopped while starting")
            await asyncio.sleep(0.01)
        log.info("HTTP gateway on %s", self.url)
        return self.port

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            if self._socket is not None:
                self._socket.close()
            return
        self._server.should_exit = True
        try:
            # uvicorn waits up to the grace for open connections, then cancels them.
            await asyncio.wait_for(asyncio.shield(self._task), timeout=self._grace_s + 5.0)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._server = None
        self._task = None
