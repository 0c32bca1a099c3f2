"""The OpenAI HTTP API as the openai engine needs it, on httpx2 and
the standard json module: list models, one whole completion, a stream
of chunks as plain dicts.

Not the `openai` SDK: it builds a pydantic model per request and per
streamed chunk, which cost the worker ~0.85 ms of CPU per unary request
and ~1.9 ms per 6-chunk stream (against ~0.1 ms for the HTTP exchange
itself; bench-peers, docs/performance.md). Failures come out as the
three errors below, which the engine maps to Headrace's:

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
from collections.abc import AsyncIterator
from typing import Any

import httpx2

# Statuses worth a retry before a response starts (as the openai SDK retries).
_RETRIED = frozenset({408, 409, 429})
_BACKOFF_MAX_S = 8.0


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


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: httpx2.Timeout,
        max_retries: int,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        """http_client: a transport of one's own (tests pass a MockTransport); closed with this client."""
        self._base = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout
        self._max_retries = max_retries
        self._http = http_client or httpx2.AsyncClient(timeout=timeout)

    async def list_models(self, timeout_s: float | None = None) -> list[str]:
        timeout = self._timeout if timeout_s is None else httpx2.Timeout(timeout_s)
        response = await self._send("GET", "/models", None, {}, limits=timeout, stream=False, retries=0)
        body = _json(response)
        data = body.get("data") if isinstance(body, dict) else None
        return [str(model["id"]) for model in data or () if isinstance(model, dict) and "id" in model]

    async def complete(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        """One whole answer (a JSON object)."""
        response = await self._send("POST", path, body, headers, limits=self._timeout, stream=False)
        answer = _json(response)
        if not isinstance(answer, dict):
            raise UpstreamStatusError(response.status_code, f"not a JSON object: {response.text[:200]}", None)
        return answer

    async def open_stream(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx2.Response:
        """The streamed response, open (read it with chunks(); close it to stop the upstream)."""
        return await self._send("POST", path, body, headers, limits=self._timeout, stream=True)

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
        *,
        limits: httpx2.Timeout,
        stream: bool,
        retries: int | None = None,
    ) -> httpx2.Response:
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        request = self._http.build_request(
            method, self._base + path, content=content, headers={**self._headers, **headers}, timeout=limits
        )
        left = self._max_retries if retries is None else retries
        attempt = 0
        while True:
            try:
                response = await self._http.send(request, stream=stream)
            except httpx2.TimeoutException as exc:
                if attempt < left:
                    attempt += 1
                    await asyncio.sleep(_backoff_s(attempt, None))
                    continue
                raise UpstreamTimeout(str(exc) or type(exc).__name__) from exc
            except httpx2.TransportError as exc:
                if attempt < left:
                    attempt += 1
                    await asyncio.sleep(_backoff_s(attempt, None))
                    continue
                raise UpstreamUnreachable(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code < 400:
                return response
            if stream:
                await response.aread()
                await response.aclose()
            error = status_error(response)
            if attempt < left and (response.status_code in _RETRIED or response.status_code >= 500):
                attempt += 1
                await asyncio.sleep(_backoff_s(attempt, error.retry_after_s))
                continue
            raise error


async def chunks(response: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, until `[DONE]`. An
    event carrying an `error` ends it with UpstreamStatusError."""
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            if not data:
                continue
            chunk = json.loads(data)
            if not isinstance(chunk, dict):
                continue
            error = chunk.get("error")
            if error:
                message = error.get("message") if isinstance(error, dict) else str(error)
                raise UpstreamStatusError(500, f"error in the stream: {message}", None)
            yield chunk
    except httpx2.TimeoutException as exc:
        raise UpstreamTimeout(str(exc) or type(exc).__name__) from exc
    except httpx2.TransportError as exc:
        raise UpstreamUnreachable(f"{type(exc).__name__}: {exc}") from exc


def status_error(response: httpx2.Response) -> UpstreamStatusError:
    """An HTTP error answer, with the upstream's own words: the error
    body's message where it has one, else the body."""
    message = ""
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            error = body.get("error", body)
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                message = error["message"]
            elif isinstance(error, str):
                message = error
    if not message:
        message = response.text[:500] or response.reason_phrase
    return UpstreamStatusError(response.status_code, message, retry_after_s(response.headers))


def retry_after_s(headers: httpx2.Headers) -> float | None:
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


def _json(response: httpx2.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise UpstreamStatusError(response.status_code, f"not JSON: {response.text[:200]}", None) from exc


def _backoff_s(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None and retry_after <= 60:
        return retry_after
    return min(0.5 * 2.0 ** (attempt - 1), _BACKOFF_MAX_S)
