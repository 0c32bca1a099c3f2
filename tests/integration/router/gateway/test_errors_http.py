"""Errors in OpenAI's format with the status of the error table: 400, 404,
405, 413, 429 (+ Retry-After), 503 (+ Retry-After), 504, and a failure in
mid-stream as a final event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from headrace.local.redis_server import RedisServer
from tests.integration.router.gateway.conftest import eventually, gateway_settings, running_gateway
from tests.support.mesh import InProcessMesh


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **fields}


def assert_openai_error(response: httpx.Response, status: int, message: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"], error["message"]
    return error


@pytest.fixture
async def http(gateway_mesh: InProcessMesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_mesh.http_url) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{not json", {}, "request body: not valid JSON"),
        # Valid JSON, but not text: protobuf would refuse it deep inside.
        (
            b'{"model": "smollm2", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
            {},
            "messages[0].content: not valid Unicode (a lone UTF-16 surrogate, \\ud800, at character 1)",
        ),
        (b'{"model": "smollm2", "user": "\\udfff"}', {}, "user: not valid Unicode"),
        (b"\xed\xa0\x80", {}, "request body: not UTF-8"),
        # Deeper than any request nests, and far deeper than the decoder's stack.
        (b'{"metadata": ' + b"[" * 1000 + b"]" * 1000 + b"}", {}, "request body: nested deeper than 64 levels"),
        (b'{"metadata": ' + b"[" * 100 + b"]" * 100 + b"}", {}, "request body: nested deeper than 64 levels"),
        (chat(frobnicate=True), {}, "Unrecognized request argument supplied: frobnicate"),
        (chat(max_tokens=100_000), {}, "max_tokens: 100000 is outside [1, 512]"),
        (chat(messages=[{"role": "user", "content": "y" * 20_000}]), {}, "over the limit of 10000"),
        (chat(n=3), {}, "n: 3 choices asked"),
        (chat(), {"cache-control": "max-age=soon"}, "Cache-Control: max-age must be a whole number"),
        (chat(), {"x-headrace-timeout": "-1"}, "x-headrace-timeout: expected a positive number"),
        (chat(model="minilm"), {}, "is an embedding model"),
    ],
)
async def test_bad_requests_are_400_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any] | bytes, headers: dict[str, str], message: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await http.post("/v1/chat/completions", content=content, headers=headers)
    error = assert_openai_error(response, 400, message)
    assert error["type"] == "invalid_request_error"


async def test_unknown_models_and_routes_are_404(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json=chat(model="gpt-9"))
    assert_openai_error(response, 404, "unknown model 'gpt-9'; available: chat, minilm, smollm2")
    response = await http.post("/v1/chat/completions", json=chat(model="smollm2@7", stream=True))
    assert_openai_error(response, 404, "has no version '7'")
    assert_openai_error(await http.get("/v1/nowhere"), 404, "GET /v1/nowhere: Not Found")
    assert_openai_error(await http.get("/v1/chat/completions"), 405, "Method Not Allowed")


async def test_bodies_over_the_limit_are_413(http: httpx.AsyncClient) -> None:
    huge = json.dumps(chat(messages=[{"role": "user", "content": "z" * 70_000}])).encode()
    # Said up front by Content-Length: refused before it is read.
    response = await http.post("/v1/chat/completions", content=huge)
    assert_openai_error(response, 413, "request body: 70")

    # Sent in chunks with no length: refused once past the limit.
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(huge), 8192):
            yield huge[start : start + 8192]

    response = await http.post("/v1/chat/completions", content=chunks())
    assert_openai_error(response, 413, "is over the limit of 65536 bytes")


async def test_over_a_rate_limit_is_429_with_retry_after(redis_server: RedisServer) -> None:
    # Open dev mode: every request is the "default" tenant, with the top-level limits.
    settings = gateway_settings(redis_server.url, rate_limits={"requests_per_minute": 2})
    async with running_gateway(settings) as mesh, httpx.AsyncClient(base_url=mesh.http_url) as http:
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200
        assert (await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})).status_code == 200
        response = await http.post("/v1/chat/completions", json=chat(stream=True))
        error = assert_openai_error(response, 429, "tenant 'default' is over 2 requests per minute")
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limited"
        assert response.headers["retry-after"] == "30"
        async with openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="x", max_retries=0) as client:
            with pytest.raises(openai.RateLimitError):
                await client.embeddings.create(model="minilm", input="x")


async def test_no_worker_is_503_with_retry_after(redis_server: RedisServer) -> None:
    async with running_gateway(gateway_settings(redis_server.url)) as mesh:
        await mesh.stop_worker(mesh.workers[0])
        async with httpx.AsyncClient(base_url=mesh.http_url) as http:
            response = await http.post("/v1/chat/completions", json=chat(), headers={"cache-control": "no-cache"})
        error = assert_openai_error(response, 503, "smollm2@1")
        assert error["type"] == "service_unavailable" and response.headers["retry-after"] == "1"


async def test_a_passed_deadline_is_504_and_stops_the_engine(redis_server: RedisServer) -> None:
    settings = gateway_settings(redis_server.url, pools={"smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 3000}}})
    async with running_gateway(settings) as mesh, httpx.AsyncClient(base_url=mesh.http_url) as http:
        engine = mesh.workers[0].app.engine
        for body in (chat(), chat(stream=True)):
            response = await http.post("/v1/chat/completions", json=body, headers={"x-headrace-timeout": "0.3"})
            assert_openai_error(response, 504, "")
            assert await eventually(lambda: engine.stats().running == 0)


async def test_a_failure_after_the_first_token_ends_the_stream_with_an_error_event(redis_server: RedisServer) -> None:
    settings = gateway_settings(
        redis_server.url, pools={"smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 1, "fail_after_tokens": 3}}}
    )
    async with running_gateway(settings) as mesh:
        async with httpx.AsyncClient(base_url=mesh.http_url) as http:
            async with http.stream("POST", "/v1/chat/completions", json=chat(max_tokens=20, stream=True)) as response:
                assert response.status_code == 200
                events = [line.removeprefix("data: ") async for line in response.aiter_lines() if line]
        assert len(events) == 4 and "[DONE]" not in events
        error = json.loads(events[-1])["error"]
        assert error["type"] == "server_error" and "after 3 tokens" in error["message"]
        # The official client raises it.
        async with openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="x", max_retries=0) as client:
            stream = await client.chat.completions.create(**chat(max_tokens=20, stream=True))
            with pytest.raises(openai.APIError, match="after 3 tokens"):
                async for _chunk in stream:
                    await asyncio.sleep(0)
