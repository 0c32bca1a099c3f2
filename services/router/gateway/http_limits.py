"""The gateway's connection limits, where uvicorn has none of its own.

uvicorn (with httptools, the parser it picks) bounds neither the size of a
request's head nor the time a client takes to send it or its body, and its
`limit_concurrency` answers 503 to requests but keeps every connection open
(open files grow with whatever a client opens). This protocol is uvicorn's
httptools one plus:

- a head (request line and headers) over `max_header_bytes`: 431, closed;
- a head not complete within `header_timeout_s` of the connection or the
  request starting: 408 (or just closed, if nothing came), closed;
- a body that stalls for `body_timeout_s`: 408, closed, and the app's read
  ends as a disconnect;
- past `max_connections` open connections: 503 with Retry-After, closed at
  once.

Idle keep-alive connections are uvicorn's own `timeout_keep_alive`.
Refusals are answered in OpenAI's error format, like every other error.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from headrace.runtime.config import GatewaySettings

# How long a refused connection's late bytes are dropped before it closes.
_LINGER_S = 1.0
_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def of(cls, settings: GatewaySettings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_connections=settings.max_connections,
        )


def refusal(status: int, message: str, *, code: str, retry_after_s: int | None = None) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection."""
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after_s is not None:
        head.append(f"retry-after: {retry_after_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class LimitedHttpProtocol(HttpToolsProtocol):
    """Made per server by `limited_protocol` (uvicorn builds protocols from
    a class, so the limits ride on it)."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_done = False
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        # Refused: what still arrives is dropped until the close.
        self._draining = False

    # --- connection ------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        crowded = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if crowded:
            # Closed at once, not lingering: under a flood, every refused
            # connection kept open a moment longer is an open file more.
            message = f"the gateway holds {self.limits.max_connections} connections, its limit; retry shortly"
            self._draining = True
            transport.write(refusal(503, message, code="too_many_connections", retry_after_s=1))
            transport.close()
            return
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        if self._head_done:
            super().data_received(data)
            return
        self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.get_protocol() is not self:
            # Upgraded to a WebSocket: its own protocol takes it from here.
            self._disarm()
        elif not self._head_done and self._head_bytes > self.limits.max_header_bytes:
            message = f"request line and headers: over the limit of {self.limits.max_header_bytes} bytes"
            self._refuse(refusal(431, message, code="headers_too_large"))

    # --- parser callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:
            # A new request on a kept-alive connection: its head gets the
            # same time (the first one's clock runs from the connection).
            self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._head_done = True
        # Until the message is complete, the body must keep coming.
        self._arm(self.limits.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm(self.limits.body_timeout_s, self._body_timed_out)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._head_done = False
        self._head_bytes = 0
        super().on_message_complete()

    # --- timers ----------------------------------------------------------

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _live(self) -> bool:
        return not self.transport.is_closing() and self.transport.get_protocol() is self

    def _head_timed_out(self) -> None:
        self._timer = None
        if not self._live():
            return
        if self._head_bytes == 0:
            # Nothing asked: nothing to answer.
            self.transport.close()
            return
        message = f"request line and headers: not received within {self.limits.header_timeout_s:g}s"
        self._refuse(refusal(408, message, code="request_timeout"))

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if not self._live() or cycle is None:
            return
        if cycle.response_complete:
            # Answered without reading it all, and the rest trickles in:
            # nothing is waiting for it.
            self.transport.close()
            return
        answer = b""
        if not cycle.response_started:
            message = f"request body: nothing received for {self.limits.body_timeout_s:g}s"
            answer = refusal(408, message, code="request_timeout")
        # The app's pending read ends as a disconnect (body.py: 499, no log).
        cycle.disconnected = True
        cycle.message_event.set()
        self._refuse(answer)

    def _refuse(self, answer: bytes) -> None:
        """Answer, then close without a reset: closing a socket with unread
        bytes (the rest of a huge head) sends RST, and the client may lose
        the answer. So: answer, half-close, drop what still comes for a
        moment, then close."""
        self._draining = True
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(_LINGER_S, self.transport.close)


def limited_protocol(settings: GatewaySettings) -> type[LimitedHttpProtocol]:
    """uvicorn's httptools protocol with the gateway's limits."""
    return type("GatewayHttpProtocol", (LimitedHttpProtocol,), {"limits": ConnectionLimits.of(settings)})
