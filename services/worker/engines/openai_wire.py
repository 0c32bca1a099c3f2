"""The OpenAI HTTP API as the openai engine needs it, on aiohttp and the
standard json module: list models, one whole completion, a stream of
chunks as plain dicts.

Not the `openai` SDK: it builds a pydantic model per request and per
streamed chunk, which cost the worker ~0.85 ms of CPU per unary request
and ~1.9 ms per 6-chunk stream. Not httpx2 either, which that SDK runs
on: against the same local upstream its client took ~0.6 ms of CPU per
request at 32 in flight, aiohttp's ~0.09 ms (bench-peers,
docs/performance.md). Failures come out as the three errors below, which
the engine maps to Headrace's:

    UpstreamError
     ├── UpstreamStatusError   the upstream answered with an HTTP error
     ├── UpstreamUnreachable   no answer: connection refused, reset, DNS, TLS
     └── UpstreamTimeout       no answer in time
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp.http_exceptions import LineTooLong

# Statuses worth a retry before a response starts (as the openai SDK retries).
_RETRIED = frozenset({408, 409, 429})
_BACKOFF_MAX_S = 8.0
# One server-sent event line at most (aiohttp's own line limit is 128 KiB;
# a tool call's arguments can come in one larger chunk).
MAX_EVENT_BYTES = 8 * 1024 * 1024


class UpstreamError(Exception):
    pass


class UpstreamStatusError(UpstreamError):
    def __init__(self, status: int, message: str, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class UpstreamUnreachable(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


def env_proxy(base_url: str) -> str | None:
    """The proxy HTTP(S)_PROXY/NO_PROXY name for the upstream, read once.
    (aiohttp's trust_env reads them, and ~/.netrc, on every request: it
    quadrupled the client's CPU per request.)"""
    parts = urllib.parse.urlsplit(base_url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        connect_timeout_s: float,
        request_timeout_s: float,
        max_retries: int,
    ) -> None:
        """request_timeout_s: the whole of one request, a stream read to its
        end included. Call from a running event loop: the session belongs to it."""
        self._base = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)
        self._max_retries = max_retries
        self._http = aiohttp.ClientSession(
            # The engine bounds requests in flight itself (max_concurrency).
            connector=aiohttp.TCPConnector(limit=0),
            timeout=self._timeout,
            # Requests of many tenants share this session: no cookies kept between them.
            cookie_jar=aiohttp.DummyCookieJar(),
            proxy=env_proxy(base_url),
        )

    async def list_models(self, timeout_s: float | None = None) -> list[str]:
        timeout = self._timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
        response = await self._send("GET", "/models", None, {}, limits=timeout, retries=0)
        body = await _json(response)
        data = body.get("data") if isinstance(body, dict) else None
        return [str(model["id"]) for model in data or () if isinstance(model, dict) and "id" in model]

    async def complete(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        """One whole answer (a JSON object)."""
        response = await self._send("POST", path, body, headers, limits=self._timeout)
        answer = await _json(response)
        if not isinstance(answer, dict):
            raise UpstreamStatusError(response.status, f"not a JSON object: {json.dumps(answer)[:200]}", None)
        return answer

    async def open_stream(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> UpstreamStream:
        """The streamed response, open (read it with chunks(); close it to stop the upstream)."""
        return UpstreamStream(await self._send("POST", path, body, headers, limits=self._timeout))

    async def close(self) -> None:
        await self._http.close()

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
        *,
        limits: aiohttp.ClientTimeout,
        retries: int | None = None,
    ) -> aiohttp.ClientResponse:
        """The response, its body unread, once it has a status below 400."""
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        sent_headers = {**self._headers, **headers}
        url = self._base + path
        left = self._max_retries if retries is None else retries
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method, url, data=content, headers=sent_headers, timeout=limits, allow_redirects=False
                )
            except (TimeoutError, aiohttp.ClientError) as exc:
                if attempt < left:
                    attempt += 1
                    await asyncio.sleep(_backoff_s(attempt, None))
                    continue
                raise transport_error(exc) from exc
            if response.status < 400:
                return response
            error = await status_error(response)
            if attempt < left and (response.status in _RETRIED or response.status >= 500):
                attempt += 1
                await asyncio.sleep(_backoff_s(attempt, error.retry_after_s))
                continue
            raise error


class UpstreamStream:
    """One streamed answer: its events with chunks(), then aclose()."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def aclose(self) -> None:
        """Back to the pool when read to its end; else the connection is
        closed, which is what tells the upstream to stop generating."""
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()


async def chunks(stream: UpstreamStream) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, until `[DONE]`. An
    event carrying an `error` ends it with UpstreamStatusError."""
    content = stream.response.content
    try:
        while True:
            line = await content.readuntil(b"\n", max_size=MAX_EVENT_BYTES)
            if not line:
                return  # The upstream ended the stream without [DONE].
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            if not data:
                continue
            try:
                chunk = json.loads(data)
            except ValueError as exc:
                raise UpstreamStatusError(502, f"an event that is not JSON: {data[:200]!r}", None) from exc
            if not isinstance(chunk, dict):
                continue
            error = chunk.get("error")
            if error:
                message = error.get("message") if isinstance(error, dict) else str(error)
                raise UpstreamStatusError(500, f"error in the stream: {message}", None)
            yield chunk
    except LineTooLong as exc:
        raise UpstreamStatusError(502, f"an event longer than {MAX_EVENT_BYTES} bytes", None) from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise transport_error(exc) from exc


def transport_error(exc: BaseException) -> UpstreamError:
    """No answer: a timeout, or a connection that failed or broke."""
    if isinstance(exc, TimeoutError):  # aiohttp's own timeouts are TimeoutErrors too
        return UpstreamTimeout(str(exc) or type(exc).__name__)
    return UpstreamUnreachable(f"{type(exc).__name__}: {exc}")


async def status_error(response: aiohttp.ClientResponse) -> UpstreamStatusError:
    """An HTTP error answer, with the upstream's own words: the error
    body's message where it has one, else the body. Reads and releases it."""
    try:
        raw = await response.read()
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    finally:
        response.release()
    message = ""
    with contextlib.suppress(ValueError):
        body = json.loads(raw)
        if isinstance(body, dict):
            error = body.get("error", body)
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                message = error["message"]
            elif isinstance(error, str):
                message = error
    if not message:
        message = raw[:500].decode("utf-8", "replace") or (response.reason or "")
    return UpstreamStatusError(response.status, message, retry_after_s(response.headers))


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms`, or `retry-after` (seconds or an HTTP date)."""
    with contextlib.suppress(KeyError, ValueError):
        return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    when = email.utils.parsedate_tz(value)
    if when is None:
        return None
    return max(0.0, float(email.utils.mktime_tz(when)) - time.time())


async def _json(response: aiohttp.ClientResponse) -> Any:
    """The body as JSON; the connection goes back to the pool once read."""
    try:
        raw = await response.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise transport_error(exc) from exc
    finally:
        response.release()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise UpstreamStatusError(response.status, f"not JSON: {raw[:200].decode('utf-8', 'replace')}", None) from exc


def _backoff_s(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None and retry_after <= 60:
        return retry_after
    return min(0.5 * 2.0 ** (attempt - 1), _BACKOFF_MAX_S)
